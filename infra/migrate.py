"""`python -m infra.migrate`: bring the database named by DATABASE_URL to the newest schema.

For deploy hooks (Render's preDeployCommand) and for AUTO_MIGRATE=false setups.
"""

from __future__ import annotations

from libs.common import db, runtime


def main(argv: list[str] | None = None) -> int:
    runtime.parser("python -m infra.migrate", "Run Conveyor's database migrations.").parse_args(
        argv
    )
    settings = runtime.load_settings()
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    print(f"conveyor: database schema is up to date ({engine.url.render_as_string()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
