"""Alembic environment: runs on the connection that libs.common.db.upgrade hands over."""

from alembic import context
from sqlalchemy import create_engine

from libs.common.models import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # plain `alembic` CLI use: DATABASE_URL-style sqlalchemy.url option
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    context.run_migrations()
