"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import text

from libs.common import db
from libs.common.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/schema.db")
    try:
        db.upgrade(engine)
        db.upgrade(engine)  # idempotent
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_upgrading_sqlite_keeps_the_rows_of_rebuilt_tables(tmp_path: Path) -> None:
    """0006 rebuilds ``jobs`` on SQLite: with foreign keys on, dropping the old table would
    delete every task and item error (ON DELETE CASCADE). db.upgrade turns them off."""
    engine = db.make_engine(f"sqlite:///{tmp_path}/old.db")
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0005")
            connection.execute(
                text(
                    "INSERT INTO jobs (id, kind, state, pool, params, source_bytes, header, "
                    "created_at, fanout_done, cursor_offset, cursor_seq, cursor_row, rows_total, "
                    "rows_done, rows_failed, rows_filtered, tasks_total, tasks_done, tasks_failed)"
                    " VALUES ('j1', 'csv', 'queued', 'shared', '{}', 0, '[]', 1.0, 0, 0, 0, 1, "
                    "0, 0, 0, 0, 1, 0, 0)"
                )
            )
            connection.execute(
                text(
                    'INSERT INTO tasks (id, job_id, seq, state, start, "end", first_row, rows, '
                    "rows_out, rows_failed, rows_filtered, attempts) "
                    "VALUES ('j1-0', 'j1', 0, 'queued', 0, 10, 1, 3, 0, 0, 0, 0)"
                )
            )
        db.upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT id, owner_id FROM jobs")).all() == [("j1", None)]
            assert connection.execute(text("SELECT id FROM tasks")).all() == [("j1-0",)]
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
