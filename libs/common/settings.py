"""Settings: read once from the environment by an entry point, then passed down.

Every variable is declared in ``FIELDS`` with its parser and help text, so ``--help``, the
README table and the validation error all come from one place. A bad value stops start-up
with one line that names the variable.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit


class SettingsError(ValueError):
    """A setting is missing or malformed; ``str()`` is one line naming the variable."""


def _positive_int(raw: str) -> int:
    value = int(raw.replace("_", ""))
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number, zero or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a finite number above zero")
    return value


def _port(raw: str) -> int:
    value = _positive_int(raw)
    if value > 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _broker_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"amqp", "amqps", "pyamqp", "sqs", "memory"}:
        raise ValueError(
            f"unsupported scheme {parts.scheme!r} (use amqp://, amqps://, sqs:// or unset)"
        )
    try:
        _ = parts.port  # a password with an unquoted "/" breaks the parse here
    except ValueError:
        raise ValueError(
            "cannot tell the host from the credentials: URL-quote the user and password "
            "('/' as %2F, '+' as %2B, '@' as %40, ':' as %3A)"
        ) from None
    return raw


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.replace("_", ""))
        if not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return value

    return parse


def database_url(raw: str) -> str:
    """Accept the URLs that hosts hand out (``postgres://``) and pin the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    scheme = urlsplit(raw).scheme
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise ValueError(f"unsupported scheme {scheme!r} (use postgresql:// or sqlite:///)")
    return raw


def storage_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("s3:// URL needs a bucket: s3://bucket/prefix")
        return raw.rstrip("/")
    if parts.scheme == "file":
        host = "" if parts.netloc == "localhost" else parts.netloc  # file://dir is relative
        return "file://" + str(Path(host + parts.path).resolve())
    if not parts.scheme:
        return "file://" + str(Path(raw).resolve())
    raise ValueError(f"unsupported scheme {parts.scheme!r} (use file:// or s3://)")


_any_storage_url = storage_url  # the Settings class body shadows the name with a field


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


def _name(raw: str) -> str:
    if not raw or not all(c.isalnum() or c in "-_" for c in raw):
        raise ValueError("use letters, digits, '-' and '_' only")
    return raw


def _str(raw: str) -> str:
    return raw


def _secret(raw: str) -> str:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return raw


def _session_secret(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("must be at least 32 characters")
    return raw


_SECRETS = (_secret, _session_secret)

#: ACCOUNTS values: log in (sessions, API tokens), or everyone is the implicit local admin.
ACCOUNTS_REQUIRED, ACCOUNTS_OFF = "required", "off"


def _accounts(raw: str) -> str:
    mode = raw.strip().lower()
    if mode not in {ACCOUNTS_REQUIRED, ACCOUNTS_OFF}:
        raise ValueError(f"expected {ACCOUNTS_REQUIRED} or {ACCOUNTS_OFF}")
    return mode


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: an address only this machine reaches."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_web(loaded: Settings) -> None:
    """What the web service needs beyond the shared settings: with accounts, a
    SESSION_SECRET; without them, a loopback HOST. SettingsError otherwise."""
    if loaded.accounts_required and loaded.session_secret is None:
        raise SettingsError(
            "SESSION_SECRET: required when accounts are on (ACCOUNTS=required, or any "
            "deployment: BROKER_URL set or HOST not loopback); 32+ random characters: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not loaded.accounts_required and not is_loopback(loaded.host):
        raise SettingsError(
            f"ACCOUNTS: off only on a loopback HOST, not {loaded.host!r}: anyone who "
            "reaches the app would be its admin"
        )


def _proxies(raw: str) -> tuple[str, ...]:
    """Addresses, CIDR networks or peer names (``testclient``), as uvicorn's proxy
    middleware takes them; not ``*``, which would let any client choose its address."""
    proxies = tuple(p.strip() for p in raw.split(",") if p.strip())
    for proxy in proxies:
        if proxy == "*" or not re.fullmatch(r"[0-9A-Za-z.:_/\[\]-]+", proxy):
            raise ValueError(
                f"{proxy!r}: list the proxies' addresses or networks (10.0.0.0/8); "
                "'*' would believe any client's X-Forwarded-For"
            )
    return proxies


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return raw


def _url_prefixes(raw: str) -> tuple[str, ...]:
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    for prefix in prefixes:
        if urlsplit(prefix).scheme not in {"file", "s3"}:
            raise ValueError(f"{prefix!r}: use file:///dir/ or s3://bucket/prefix/ URLs")
    return tuple(storage_url(p) + "/" for p in prefixes)


def _host_port(raw: str) -> str:
    """``host`` or ``host:port`` (``[v6]:port`` too); a missing port is AMQP's 5672."""
    parts = urlsplit(f"//{raw}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.netloc != raw or not parts.hostname or "@" in raw or port == 0:
        raise ValueError("expected host or host:port (no scheme, path or credentials)")
    return raw if port else f"{raw}:5672"


def _setting(env: str, parse: Callable[[str], Any], default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    broker_url: str | None = _setting(
        "BROKER_URL", _broker_url, None,
        "amqp://user:pass@host/vhost or sqs://. Unset: the embedded all-in-one "
        "(in-process broker; web also runs the dispatcher and a worker).",
    )  # fmt: skip
    database_url: str = _setting(
        "DATABASE_URL", database_url, "sqlite:///var/conveyor.db",
        "postgresql://user:pass@host/db or sqlite:///path.db.",
    )  # fmt: skip
    storage_url: str = _setting(
        "STORAGE_URL", storage_url, "file://var/storage",
        "Where uploads, parts and outputs live: file:///dir or s3://bucket/prefix.",
    )  # fmt: skip
    host: str = _setting("HOST", _str, "127.0.0.1", "Web: address to bind (0.0.0.0 on hosts).")
    port: int = _setting("PORT", _port, 8000, "Web: port to listen on.")
    queue_prefix: str = _setting(
        "QUEUE_PREFIX", _name, "conveyor", "Prefix of every exchange and queue name."
    )
    pool: str = _setting("WORKER_POOL", _name, "shared", "Worker: the pool whose tasks it takes.")
    worker_declares: bool = _setting(
        "WORKER_DECLARE", _bool, True,
        "Worker: declare the queues and exchanges at start. false: they must exist (the "
        "services declare them), as for the least-privilege worker user of infra/rabbitmq.py. "
        "Paired workers never declare.",
    )  # fmt: skip
    concurrency: int = _setting(
        "WORKER_CONCURRENCY", _positive_int, 1, "Worker: tasks run at once (threads)."
    )
    chunk_rows: int = _setting("CHUNK_ROWS", _positive_int, 5000, "Rows per CSV task.")
    chunk_max_bytes: int = _setting(
        "CHUNK_MAX_BYTES",
        _positive_int,
        8 << 20,
        "Bytes per CSV task at most (a task closes early).",
    )
    max_upload_bytes: int = _setting(
        "MAX_UPLOAD_BYTES", _positive_int, 2 << 30, "Largest accepted upload; over it, HTTP 413."
    )
    max_attempts: int = _setting(
        "MAX_ATTEMPTS", _positive_int, 5, "Tries of a task with transient errors before it is dead."
    )
    retry_base_seconds: float = _setting(
        "RETRY_BASE_SECONDS", _non_negative_float, 1.0, "First retry delay; doubles per attempt."
    )
    retry_max_seconds: float = _setting(
        "RETRY_MAX_SECONDS", _non_negative_float, 300.0, "Longest retry delay."
    )
    delivery_limit: int = _setting(
        "DELIVERY_LIMIT", _positive_int, 5,
        "Times a message may come back unacknowledged (a consumer died on it) before the "
        "broker dead-letters it: at most DELIVERY_LIMIT + 1 deliveries.",
    )  # fmt: skip
    shutdown_grace_seconds: float = _setting(
        "SHUTDOWN_GRACE_SECONDS", _non_negative_float, 30.0,
        "On SIGTERM, how long in-flight work may finish before it is handed back.",
    )  # fmt: skip
    heartbeat_seconds: float = _setting(
        "HEARTBEAT_SECONDS", _positive_float, 5.0,
        "Worker: seconds between the heartbeats that keep it listed as online.",
    )  # fmt: skip
    offline_after_missed: int = _setting(
        "OFFLINE_AFTER_MISSED", _positive_int, 3,
        "Web: a worker is shown offline once this many of its heartbeats are overdue.",
    )  # fmt: skip
    max_row_errors_per_task: int = _setting(
        "MAX_ROW_ERRORS_PER_TASK", _positive_int, 1000,
        "Row errors kept in detail per task; the counts stay exact beyond it.",
    )  # fmt: skip
    tracks_per_task: int = _setting(
        "TRACKS_PER_TASK", _int_range(1, 1000), 10, "Tracks per music task (a worker's batch)."
    )
    lastfm_api_key: str | None = _setting(
        "LASTFM_API_KEY", _str, None,
        "Dispatcher and web: the Last.fm API key. Unset: Last.fm jobs are refused (503).",
    )  # fmt: skip
    lastfm_api_url: str | None = _setting(
        "LASTFM_API_URL", _http_url, None,
        "Dispatcher: the Last.fm API endpoint. Unset: https://ws.audioscrobbler.com/2.0/.",
    )  # fmt: skip
    audio_search_prefix: str = _setting(
        "AUDIO_SEARCH_PREFIX", _str, "ytsearch1:",
        "Worker: what yt-dlp searches with, before 'artist title'. An http(s):// URL gets "
        "the query URL-quoted (a local media server in tests).",
    )  # fmt: skip
    audio_max_duration: float = _setting(
        "AUDIO_MAX_DURATION_SECONDS", _non_negative_float, 1200.0,
        "Worker: longer tracks are recorded as unavailable ('too long').",
    )  # fmt: skip
    audio_max_bytes: int = _setting(
        "AUDIO_MAX_DOWNLOAD_BYTES", _positive_int, 100 << 20,
        "Worker: larger downloads are recorded as unavailable ('too big').",
    )  # fmt: skip
    audio_analysis_seconds: float = _setting(
        "AUDIO_ANALYSIS_SECONDS", _non_negative_float, 180.0,
        "Worker: a vector describes at most this many seconds from the start of a track.",
    )  # fmt: skip
    audio_roots: tuple[str, ...] | None = _setting(
        "AUDIO_ROOTS", _url_prefixes, None,
        "Web: comma-separated file:// or s3:// URL prefixes that audio jobs may read. Unset: "
        "any s3:// prefix, and file:// too on the embedded all-in-one.",
    )  # fmt: skip
    ffmpeg_binary: str | None = _setting(
        "FFMPEG_BINARY", _str, None,
        "Worker: the ffmpeg to decode with. Unset: ffmpeg on PATH, else imageio-ffmpeg's.",
    )  # fmt: skip
    work_dir: str | None = _setting(
        "WORK_DIR", _str, None,
        "Worker: folder for downloads in progress. Unset: conveyor-work in the temp folder.",
    )  # fmt: skip
    worker_token_key: str | None = _setting(
        "WORKER_TOKEN_KEY", _secret, None,
        "Web: secret key (16+ characters) that worker tokens are HMAC'd with. Unset: worker "
        "pairing answers 503, except on the embedded all-in-one (a random key per process).",
    )  # fmt: skip
    worker_broker_url: str | None = _setting(
        "WORKER_BROKER_URL", _broker_url, None,
        "Web: paired workers take tasks straight from this broker (operators' own "
        "machines). Unset: paired workers go through the web's gateway and get no broker "
        "credentials.",
    )  # fmt: skip
    worker_storage_url: str | None = _setting(
        "WORKER_STORAGE_URL", _any_storage_url, None,
        "Web: the storage URL handed to paired (remote) workers. Unset: none is sent.",
    )  # fmt: skip
    pairing_attempts_per_minute: int = _setting(
        "PAIRING_ATTEMPTS_PER_MINUTE", _positive_int, 10,
        "Web: worker pairing attempts accepted per client address per minute, and pairing "
        "codes a user may make per minute (then 429).",
    )  # fmt: skip
    pairing_attempts_global_per_minute: int = _setting(
        "PAIRING_ATTEMPTS_GLOBAL_PER_MINUTE", _positive_int, 100,
        "Web: worker pairing attempts accepted per minute from all clients (then 429), "
        "without accounts only: with accounts the limits are per address and per user, so "
        "bogus attempts cannot lock out real codes.",
    )  # fmt: skip
    accounts: str | None = _setting(
        "ACCOUNTS", _accounts, None,
        "Web: required (log in: browser sessions with CSRF checks, or API tokens) or off "
        "(every request is the implicit local admin, no CSRF check; only on a loopback "
        "HOST). Unset: off for the all-in-one on a loopback HOST (scripts/run), required "
        "everywhere else.",
    )  # fmt: skip
    session_secret: str | None = _setting(
        "SESSION_SECRET", _session_secret, None,
        "Web: secret (32+ characters) that session cookies are encrypted and CSRF tokens "
        "signed with; changing it logs everyone out. Required with ACCOUNTS=required; "
        "otherwise unset means a random one per process.",
    )  # fmt: skip
    allow_signup: bool = _setting(
        "ALLOW_SIGNUP", _bool, False,
        "Web: anyone who reaches the app may make a member account. false: accounts come "
        "from an admin's invitation or the users CLI only.",
    )  # fmt: skip
    trusted_proxies: tuple[str, ...] | None = _setting(
        "TRUSTED_PROXIES", _proxies, None,
        "Web: comma-separated addresses or networks of the reverse proxies whose "
        "X-Forwarded-For (and -Proto) are believed for the client's address. Unset: none, "
        "the peer is the client.",
    )  # fmt: skip
    login_attempts_per_minute: int = _setting(
        "LOGIN_ATTEMPTS_PER_MINUTE", _positive_int, 10,
        "Web: login and invitation attempts accepted per client address per minute (then "
        "429); per account, ten times as many from all addresses together.",
    )  # fmt: skip
    auto_migrate: bool = _setting(
        "AUTO_MIGRATE", _bool, True, "Run database migrations at start-up."
    )
    log_level: str = _setting("LOG_LEVEL", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR.")
    sqs_region: str = _setting(
        "SQS_REGION", _str, "us-east-1",
        "SQS: the queues' AWS region. Unset: AWS_REGION or AWS_DEFAULT_REGION, else us-east-1.",
    )  # fmt: skip
    sqs_visibility_timeout: int = _setting(
        "SQS_VISIBILITY_TIMEOUT", _int_range(2, 43200), 60,
        "SQS: seconds a received message stays hidden. A worker extends it every third of "
        "it while the task runs; a dead worker's task comes back after it.",
    )  # fmt: skip
    sqs_wait_seconds: int = _setting(
        "SQS_WAIT_SECONDS", _int_range(0, 20), 5,
        "SQS: long polling, seconds a receive waits for a message (0 to 20); at most a "
        "quarter of SQS_VISIBILITY_TIMEOUT.",
    )  # fmt: skip
    sqs_create_queues: bool = _setting(
        "SQS_CREATE_QUEUES", _bool, True,
        "SQS: create missing queues (with their redrive policy) and the control topic at "
        "start. false: the queues must exist (python -m infra.aws); no cancel broadcast.",
    )  # fmt: skip
    broker_host: str | None = _setting(
        "BROKER_HOST", _host_port, None,
        "Host or host:port (port 5672 if none) of an AMQP broker: with BROKER_USER and "
        "BROKER_PASSWORD it makes BROKER_URL when that is unset (for hosts that give parts).",
    )  # fmt: skip
    broker_user: str | None = _setting(
        "BROKER_USER", _str, None, "The AMQP user with BROKER_HOST (ignored if BROKER_URL is set)."
    )
    broker_password: str | None = _setting(
        "BROKER_PASSWORD", _str, None,
        "The AMQP password with BROKER_HOST, any characters (ignored if BROKER_URL is set).",
    )  # fmt: skip

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def accounts_required(self) -> bool:
        """Log in, unless ACCOUNTS=off, or unset on the all-in-one bound to loopback: a
        deployment never runs without accounts."""
        if self.accounts is not None:
            return self.accounts == ACCOUNTS_REQUIRED
        return not (self.embedded and is_loopback(self.host))

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "memory://"

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``environ`` (default ``os.environ``); raise SettingsError."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    region = env.get("AWS_REGION", "").strip() or env.get("AWS_DEFAULT_REGION", "").strip()
    if region:
        values["sqs_region"] = region  # SQS_REGION, when set, wins below
    for f in fields(Settings):
        name = f.metadata["env"]
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            if f.name in {"storage_url"}:
                values[f.name] = storage_url(str(f.default))
            continue
        try:
            values[f.name] = f.metadata["parse"](raw.strip())
        except ValueError as exc:
            got = "a secret" if f.metadata["parse"] in _SECRETS else repr(_redact(raw))
            raise SettingsError(f"{name}: {exc} (got {got})") from None
    if "broker_url" not in values:
        values["broker_url"] = _assembled_broker_url(values)
    loaded = Settings(**values)
    if loaded.sqs_wait_seconds * 4 > loaded.sqs_visibility_timeout:
        raise SettingsError(
            f"SQS_WAIT_SECONDS: at most a quarter of SQS_VISIBILITY_TIMEOUT "
            f"({loaded.sqs_visibility_timeout}), or leases may lapse while a receive waits "
            f"(got {loaded.sqs_wait_seconds!r})"
        )
    return loaded


def _assembled_broker_url(values: Mapping[str, Any]) -> str | None:
    """``amqp://user:password@host:port/`` from BROKER_HOST/USER/PASSWORD, quoted; or None.

    For hosts that hand out a broker's address and credentials separately and cannot join
    strings (Render's Blueprint): only when BROKER_URL is unset.
    """
    host = values.get("broker_host")
    user, password = values.get("broker_user"), values.get("broker_password")
    if host is None:
        for name, value in (("BROKER_USER", user), ("BROKER_PASSWORD", password)):
            if value is not None:
                raise SettingsError(f"{name}: needs BROKER_HOST (or set BROKER_URL instead)")
        return None
    if (user is None) != (password is None):
        missing = "BROKER_PASSWORD" if password is None else "BROKER_USER"
        raise SettingsError(f"{missing}: not set, but BROKER_HOST is (set user and password)")
    credentials = ""
    if user is not None and password is not None:
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return _broker_url(f"amqp://{credentials}{host}/")


def _redact(raw: str) -> str:
    """``raw`` without the password of a URL, for messages that quote a bad value."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]*:)[^@]*@", r"\1***@", raw, flags=re.IGNORECASE)


def describe() -> str:
    """The settings table for ``--help``."""
    lines = []
    for f in fields(Settings):
        default = "unset" if f.default is None else f.default
        lines.append(f"  {f.metadata['env']:<24} {f.metadata['help']} [default: {default}]")
    return "\n".join(lines)
