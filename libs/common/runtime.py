"""What every entry point does first: settings, logging, and the shared components."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import sqlalchemy.exc
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from libs.common import db, logs, settings
from libs.common.broker import AMQP_HEARTBEAT, Broker, SqsOptions
from libs.common.storage import Storage


@dataclass
class Components:
    settings: settings.Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: Storage
    broker: Broker


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Settings (environment variables):\n" + settings.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def load_settings() -> settings.Settings:
    """Settings from the environment, or exit 2 with one line naming the variable."""
    try:
        loaded = settings.load()
    except settings.SettingsError as exc:
        print(f"conveyor: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(loaded.log_level)
    return loaded


def broker(config: settings.Settings, *, heartbeat: int = AMQP_HEARTBEAT) -> Broker:
    """The broker of ``config``; ``heartbeat``: the AMQP heartbeat to ask for, in seconds."""
    sqs = SqsOptions(
        region=config.sqs_region,
        visibility_timeout=config.sqs_visibility_timeout,
        wait_seconds=config.sqs_wait_seconds,
        create_queues=config.sqs_create_queues,
    )
    return Broker(
        config.effective_broker_url, config.queue_prefix, config.delivery_limit,
        heartbeat=heartbeat, sqs=sqs,
    )  # fmt: skip


def build(config: settings.Settings) -> Components:
    """Everything the web service and the dispatcher use (a worker needs no database)."""
    engine = database(config)
    return Components(
        config, engine, db.sessions(engine), Storage(config.storage_url), broker(config)
    )


def database(config: settings.Settings) -> Engine:
    """The database of DATABASE_URL, migrated (AUTO_MIGRATE) or checked; exit 1 if unusable."""
    engine = db.make_engine(config.database_url)
    try:
        if config.auto_migrate:
            db.upgrade(engine)
        else:
            db.ping(engine)
    except sqlalchemy.exc.OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        fail(f"DATABASE_URL: cannot use the database: {reason}")
    return engine


def check_ffmpeg(config: settings.Settings) -> None:
    """A worker's FFMPEG_BINARY must name a real ffmpeg: stop at start-up, not at a task."""
    from libs.common.audio.decode import find_ffmpeg

    try:
        find_ffmpeg(config.ffmpeg_binary)
    except ValueError as exc:
        fail(f"FFMPEG_BINARY: {exc}")


def fail(message: str) -> None:
    print(f"conveyor: {message}", file=sys.stderr)
    raise SystemExit(1)
