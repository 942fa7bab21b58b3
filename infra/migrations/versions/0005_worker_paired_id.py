"""workers.paired_id: which pairing (worker token) a registered worker process runs under

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("paired_id", sa.String(length=128), nullable=True))
        batch.create_index(op.f("ix_workers_paired_id"), ["paired_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_index(op.f("ix_workers_paired_id"))
        batch.drop_column("paired_id")
