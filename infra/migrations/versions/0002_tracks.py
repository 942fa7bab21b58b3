"""tracks, and the track ids of a track task

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tracks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("artist", sa.String(length=512), nullable=False),
        sa.Column("title", sa.String(length=512), nullable=False),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.Column("vector_version", sa.Integer(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index(op.f("ix_tracks_artist"), "tracks", ["artist"], unique=False)
    op.create_index(op.f("ix_tracks_title"), "tracks", ["title"], unique=False)
    op.create_index(op.f("ix_tracks_updated_at"), "tracks", ["updated_at"], unique=False)
    op.create_index(op.f("ix_tracks_vector_version"), "tracks", ["vector_version"], unique=False)
    op.add_column("tasks", sa.Column("items", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "items")
    op.drop_index(op.f("ix_tracks_vector_version"), table_name="tracks")
    op.drop_index(op.f("ix_tracks_updated_at"), table_name="tracks")
    op.drop_index(op.f("ix_tracks_title"), table_name="tracks")
    op.drop_index(op.f("ix_tracks_artist"), table_name="tracks")
    op.drop_table("tracks")
