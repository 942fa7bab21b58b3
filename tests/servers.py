"""Throw-away RabbitMQ and PostgreSQL servers for the test suite.

Plain Python, no pytest: each server runs from the system binaries (Debian
packages, see ``scripts/install-servers``) in its own temporary directory,
listening on free ports on 127.0.0.1 only (RabbitMQ: unless ``listen=`` says otherwise).

    with RabbitMQServer() as rabbit, PostgresServer() as pg:
        rabbit.url   # amqp://guest:guest@127.0.0.1:PORT//
        pg.url       # postgresql+psycopg://postgres@127.0.0.1:PORT/conveyor

``RabbitMQServer.stop()`` followed by ``.start()`` restarts the broker on the
same port and data directory (durable queues and persistent messages survive),
which lets a test simulate a broker outage.

Every wait is bounded by a deadline; failures raise ``ServerError`` carrying the
tail of the server's logs.

No server process outlives the test run:
- teardown kills the process group, then every process carrying the marker
  environment variable ``CONVEYOR_TEST_SERVER_DIR=<its temp dir>`` and their
  descendants (e.g. an epmd daemonised by Erlang, PostgreSQL's backends);
- a small watchdog process per server does the same if the test process dies
  without teardown (SIGKILL, or the SIGTERM of a cancelled CI job);
- as a last resort, starting a server reaps dirs whose owner process is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MARKER_ENV = "CONVEYOR_TEST_SERVER_DIR"
OWNER_FILE = "owner.pid"
DIR_PREFIX = "conveyor-test-"

RABBITMQ_SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class ServerError(RuntimeError):
    """A test server failed to start or stop."""


class ServerNotInstalled(ServerError):
    """The server's binaries are not installed on this machine."""


# --------------------------------------------------------------------------- helpers

_handed_out_ports: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before
    by this process (so several servers started together do not collide)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise ServerError("could not find a free TCP port")


def port_is_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll ``predicate()`` until it is true; ServerError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _stat(pid: int | str) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie is dead for our purposes


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def server_pids(server_dir: Path) -> list[int]:
    """Live processes started for ``server_dir``: those whose environment holds
    the marker, plus their descendants (PostgreSQL's children overwrite their
    environment with their ps title, and setsid() out of the process group)."""
    needle = f"{MARKER_ENV}={server_dir}".encode()
    parent_of: dict[int, int] = {}
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        parent_of[pid] = stat[1]
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.add(pid)
        except OSError:
            continue
    grew = True
    while grew:
        descendants = {pid for pid, ppid in parent_of.items() if ppid in found} - found
        found |= descendants
        grew = bool(descendants)
    return sorted(found)


def kill_server_processes(server_dir: Path, timeout: float = 10.0) -> None:
    """SIGKILL every process started for ``server_dir``; wait until they are gone."""
    deadline = time.monotonic() + timeout
    while pids := server_pids(server_dir):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ServerError(f"processes {pids} of {server_dir} survive SIGKILL")
        time.sleep(0.05)


def _watchdog_main(server_dir: str) -> None:
    """Run as ``python servers.py --watchdog DIR`` with a pipe from the owner on
    stdin: when the owner closes it or dies (even by SIGKILL, or SIGTERM from a
    cancelled CI job, which skips all Python cleanup), kill the server's
    processes and remove its directory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at EOF
    kill_server_processes(Path(server_dir), timeout=30)
    shutil.rmtree(server_dir, ignore_errors=True)


def reap_stale_servers() -> None:
    """Kill servers (and remove their dirs) left by test runs that died
    without tearing down, e.g. killed with SIGKILL."""
    for d in glob.glob(os.path.join(tempfile.gettempdir(), DIR_PREFIX + "*")):
        path = Path(d)
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        log.warning("reaping test server dir %s left by dead process %s", path, owner)
        with contextlib.suppress(ServerError):
            kill_server_processes(path)
        shutil.rmtree(path, ignore_errors=True)


def _clean_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


_live_servers: set[_Server] = set()


@atexit.register
def _close_live_servers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()


# --------------------------------------------------------------------------- base


class _Server:
    """Temp dir, process handling and teardown shared by both servers."""

    kind = "server"

    def __init__(self, *, port: int | None, start_timeout: float, stop_timeout: float) -> None:
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.startup_seconds: float | None = None  # duration of the last start()
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- directory

    @property
    def dir(self) -> Path:
        """The server's private temp dir (created on first use)."""
        if self._dir is None:
            reap_stale_servers()
            self._dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{self.kind}-"))
            (self._dir / OWNER_FILE).write_text(str(os.getpid()))
            _live_servers.add(self)
            self._watchdog = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--watchdog", str(self._dir)],
                stdin=subprocess.PIPE,  # its EOF is the signal to clean up
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                cwd="/",
            )
        return self._dir

    def _marker_env(self) -> dict[str, str]:
        return {MARKER_ENV: str(self.dir)}

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self._kill_all()
            raise
        self.startup_seconds = time.monotonic() - began
        log.info("%s started on port %s in %.1fs", self.kind, self.port, self.startup_seconds)
        return self

    def stop(self) -> None:
        """Stop the server gracefully (SIGKILL after ``stop_timeout``); keeps the data."""
        if self._proc is not None:
            self._graceful_stop(self._proc)
        self._kill_all()

    def kill(self) -> None:
        """SIGKILL the server, as in a crash; keeps the data (``start()`` recovers)."""
        self._kill_all()

    def close(self) -> None:
        """Kill the server and delete its directory. Idempotent."""
        self._kill_all()
        _live_servers.discard(self)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.close()
            if not self._wait_exit(self._watchdog, 10):
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- subclass hooks

    def _start(self) -> None:
        raise NotImplementedError

    def _graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        raise NotImplementedError

    def log_files(self) -> list[Path]:
        raise NotImplementedError

    # -- process helpers

    def _spawn(
        self, argv: list[str], *, env: Mapping[str, str], log_name: str, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        with open(self.dir / log_name, "ab") as out:
            return subprocess.Popen(  # type: ignore[call-overload]
                argv,
                env={**env, **self._marker_env()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg() takes all of it
                cwd=self.dir,
                **kwargs,
            )

    def _wait_exit(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            log.warning("%s pid %s did not exit within %.0fs", self.kind, proc.pid, timeout)
            return False

    def _kill_all(self) -> None:
        """SIGKILL all the server's processes (keeps its directory)."""
        if self._dir is not None:
            # First, while parent links still show which processes are the server's.
            kill_server_processes(self._dir)
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def _fail(self, message: str) -> ServerError:
        parts = [f"{self.kind} on port {self.port}: {message}", f"(server dir: {self._dir})"]
        for path in self.log_files():
            if path.exists():
                parts.append(f"--- last lines of {path} ---\n{tail(path)}")
        return ServerError("\n".join(parts))

    def _wait_ready(self, probe: Callable[[], bool]) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while not probe():
            code = self._proc.poll()
            if code is not None:
                raise self._fail(f"exited with code {code} during startup")
            if time.monotonic() > deadline:
                raise self._fail(f"not ready after {self.start_timeout:.0f}s")
            time.sleep(0.1)


# --------------------------------------------------------------------------- RabbitMQ


def find_rabbitmq_server() -> str | None:
    """The real start script (not Debian's /usr/sbin wrapper, which switches
    user and logs to /var/log). Override with $CONVEYOR_RABBITMQ_SERVER."""
    for candidate in (os.environ.get("CONVEYOR_RABBITMQ_SERVER"), *RABBITMQ_SERVER_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_epmd() -> str | None:
    found = shutil.which("epmd")
    if found:
        return found
    erts = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))
    return erts[-1] if erts else None


def amqp_answers(port: int, host: str = HOST) -> bool:
    """True if something on ``port`` answers the AMQP 0-9-1 protocol header."""
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return bool(s.recv(8))
    except OSError:
        return False


class RabbitMQServer(_Server):
    """A single RabbitMQ node (default user guest/guest, vhost ``/``).

    ``extra_config`` adds ``key = value`` lines to its rabbitmq.conf, e.g.
    ``{"consumer_timeout": "5000"}``.

    ``listen`` is the address its AMQP listener binds (default 127.0.0.1), e.g.
    ``"0.0.0.0"`` for clients on other (network namespace) hosts; ``url_at(host)`` is the
    URL they use. Erlang distribution and epmd stay on loopback whatever it is.
    """

    kind = "rabbitmq"

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_config: Mapping[str, str] | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        listen: str = HOST,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.listen = listen
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"conveyor-test-{self.port}@localhost"
        self.config: dict[str, str] = {
            # The test machine's free disk must not block publishers.
            "disk_free_limit.absolute": "1MB",
            "log.console": "false",
            "log.file.level": "info",
            **(extra_config or {}),
        }
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}//"

    def url_at(self, host: str) -> str:
        """The URL as seen by a client that reaches this node at ``host`` (see ``listen``)."""
        return f"amqp://guest:guest@{host}:{self.port}//"

    @property
    def _probe_host(self) -> str:
        """Where the readiness probe connects: the listener, or loopback for a wildcard."""
        return HOST if self.listen in ("0.0.0.0", "::", "") else self.listen

    @property
    def node_log(self) -> Path:
        return self.dir / "log" / f"{self.nodename}.log"

    def log_files(self) -> list[Path]:
        # rabbitmq.out (stdout) last: it ends with the reason of a failed boot.
        return [self.dir / "epmd.out", self.node_log, self.dir / "rabbitmq.out"]

    def env(self) -> dict[str, str]:
        """Environment for rabbitmq-server and rabbitmqctl talking to this node."""
        d = self.dir
        return {
            **_clean_env(("RABBITMQ_", "ERL_")),
            "HOME": str(d),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.listen,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            # Nothing from /etc/rabbitmq: own env file, config, plugins list.
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),  # 3.10 appends ".conf"
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            # Erlang distribution on loopback only.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),
        }

    def _write_config(self) -> None:
        d = self.dir
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in self.config.items()))

    def _start(self) -> None:
        server = find_rabbitmq_server()
        epmd = find_epmd()
        if server is None or epmd is None or shutil.which("erl") is None:
            raise ServerNotInstalled("rabbitmq-server/erl/epmd not found")
        self._write_config()
        env = self.env()
        # Our own epmd, as a child we can kill; the node finds it via ERL_EPMD_PORT
        # and does not daemonise one of its own.
        self._epmd = self._spawn(
            [epmd, "-address", HOST, "-port", str(self.epmd_port)], env=env, log_name="epmd.out"
        )
        try:
            wait_until(lambda: port_is_open(self.epmd_port), timeout=10, what="epmd")
        except ServerError as exc:
            raise self._fail(str(exc)) from None
        self._proc = self._spawn([server], env=env, log_name="rabbitmq.out")
        self._wait_ready(lambda: amqp_answers(self.port, self._probe_host))

    def _graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # The start script traps SIGTERM and stops the node cleanly (1-3 s).
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        self._wait_exit(proc, self.stop_timeout)

    def _kill_all(self) -> None:
        # Kill the Erlang VM first so that its parent, the start script, reaps it
        # and exits (killing the whole group at once leaves a zombie beam.smp
        # for init to reap).
        if self._proc is not None:
            for pid in _children(self._proc.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self._wait_exit(self._proc, 5)
        super()._kill_all()
        if self._epmd is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._epmd.pid, signal.SIGKILL)
            self._epmd.wait()
            self._epmd = None

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node; returns stdout."""
        server = find_rabbitmq_server()
        assert server is not None
        ctl = os.path.join(os.path.dirname(server), "rabbitmqctl")
        result = subprocess.run(
            [ctl, "-n", self.nodename, *args],
            env={**self.env(), **self._marker_env()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(
                f"rabbitmqctl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout


# --------------------------------------------------------------------------- PostgreSQL


def find_postgres_bindir() -> str | None:
    """Newest /usr/lib/postgresql/*/bin (override: $CONVEYOR_PG_BINDIR)."""
    candidates = [os.environ.get("CONVEYOR_PG_BINDIR", "")]

    def version(bindir: str) -> tuple[int, ...]:
        parts = bindir.split("/")[-2].split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    candidates += sorted(glob.glob(POSTGRES_BIN_GLOB), key=version, reverse=True)
    for d in candidates:
        if d and os.access(os.path.join(d, "initdb"), os.X_OK):
            return d
    return None


class PostgresServer(_Server):
    """A PostgreSQL cluster with trust auth for user ``postgres`` and a database
    ``database`` (default ``conveyor``). As root it runs as the ``postgres`` OS user."""

    kind = "postgres"
    user = "postgres"

    def __init__(
        self,
        *,
        port: int | None = None,
        database: str = "conveyor",
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.database = database

    @property
    def url(self) -> str:
        """SQLAlchemy URL of ``self.database``."""
        return self.url_for(self.database)

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy (psycopg 3) URL of database ``dbname`` on this server."""
        return f"postgresql+psycopg://{self.user}@{HOST}:{self.port}/{dbname}"

    def dsn(self, dbname: str | None = None) -> str:
        """libpq/psycopg connection URI of ``dbname`` (default ``self.database``)."""
        return f"postgresql://{self.user}@{HOST}:{self.port}/{dbname or self.database}"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def log_files(self) -> list[Path]:
        return [self.dir / "postgres.log"]

    def connect(self, dbname: str = "postgres", **kwargs: object) -> psycopg.Connection:
        """An autocommit psycopg connection (close it, or use it as a context manager)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(self.dsn(dbname), **kwargs)  # type: ignore[arg-type]

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop ``name``, first terminating connections still open to it."""
        with self.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _as_user(self) -> dict[str, object]:
        """Popen kwargs to run as the postgres OS user when we are root
        (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    def _initdb(self, bindir: str) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, self.user, self.user)
        out = self.dir / "initdb.out"
        with open(out, "wb") as f:
            code = subprocess.call(
                [
                    os.path.join(bindir, "initdb"),
                    f"--pgdata={self.data_dir}",
                    f"--username={self.user}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                env={**_clean_env(("PG",)), **self._marker_env()},
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                timeout=self.start_timeout,
                **self._as_user(),  # type: ignore[arg-type]
            )
        if code != 0:
            raise self._fail(f"initdb failed with code {code}:\n{tail(out)}")

    def _start(self) -> None:
        bindir = find_postgres_bindir()
        if bindir is None:
            raise ServerNotInstalled("PostgreSQL (initdb, postgres) not found")
        first_start = not self.data_dir.exists()
        if first_start:
            self._initdb(bindir)
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        argv = [os.path.join(bindir, "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._proc = self._spawn(
            argv, env=_clean_env(("PG",)), log_name="postgres.log", **self._as_user()
        )
        self._wait_ready(self._accepts_connections)
        if first_start:
            self.create_database(self.database)

    def _accepts_connections(self) -> bool:
        try:
            with self.connect(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # SIGINT = "fast" shutdown: disconnect clients, checkpoint, exit.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        self._wait_exit(proc, self.stop_timeout)

    def close(self) -> None:
        # A clean shutdown frees PostgreSQL's shared memory, SIGKILL would leak it.
        if self.running:
            self.stop()
        super().close()


if __name__ == "__main__" and sys.argv[1:2] == ["--watchdog"]:
    _watchdog_main(sys.argv[2])


# --------------------------------------------------------------------------- moto (SQS + S3)


def find_moto_server() -> str | None:
    """moto's standalone server from this interpreter's environment (the dev group)."""
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


class _AwsEmulator(_Server):
    """A local stand-in for AWS: its endpoint, and the environment that points clients at it."""

    region = "us-east-1"
    access_key = "test"
    secret_key = "test"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server instead of AWS."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }


class MotoServer(_AwsEmulator):
    """moto's standalone server: an SQS and S3 emulator in one process, on loopback.

    ``.endpoint`` is its HTTP address; credentials are any non-empty strings.
    """

    kind = "moto"

    def __init__(
        self, *, port: int | None = None, start_timeout: float = 60, stop_timeout: float = 10
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)

    def log_files(self) -> list[Path]:
        return [self.dir / "moto.out"]

    def _start(self) -> None:
        binary = find_moto_server()
        if binary is None:
            raise ServerNotInstalled("moto_server not found (uv sync installs it)")
        env = {**_clean_env(("AWS_",)), **self.env}
        self._proc = self._spawn(
            [binary, "-H", HOST, "-p", str(self.port)], env=env, log_name="moto.out"
        )
        self._wait_ready(lambda: port_is_open(self.port))

    def _graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        self._wait_exit(proc, self.stop_timeout)


# --------------------------------------------------------------------------- LocalStack

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALSTACK_SCRIPT = REPO_ROOT / "localstack" / "run-without-docker.sh"
LOCALSTACK_INSTALL = "localstack/run-without-docker.sh --install-only"
LOCALSTACK_SERVICES = ("sqs", "s3", "sns")
# LocalStack's S3 keeps its objects in /tmp/localstack-s3-storage/BUCKET whatever TMPDIR
# says, and leaves the bucket directories behind. This runs it with that directory moved
# into the server's own (then removed with it).
LOCALSTACK_MAIN = """\
import os, sys
import localstack.services.s3.provider as s3_provider
s3_provider.DEFAULT_S3_TMP_DIR = os.environ["CONVEYOR_LOCALSTACK_S3_DIR"]
from localstack.runtime.main import main
sys.argv[0] = "localstack.runtime.main"
main()
"""


def localstack_venv() -> Path:
    """The virtualenv ``localstack/run-without-docker.sh`` builds ($LOCALSTACK_VENV)."""
    return Path(os.environ.get("LOCALSTACK_VENV") or REPO_ROOT / ".localstack-venv")


def localstack_installed() -> bool:
    """True if the virtualenv exists with the requirements the script wants now (the
    script is the one place that lists them; asking it takes a few milliseconds)."""
    result = subprocess.run(
        ["bash", str(LOCALSTACK_SCRIPT), "--check-install"],
        env={**os.environ, "LOCALSTACK_VENV": str(localstack_venv())},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


class LocalStackServer(_AwsEmulator):
    """LocalStack (SQS, S3 and SNS) as a plain Python process, on loopback, from the
    Python 3.13 virtualenv of ``localstack/run-without-docker.sh --install-only``.

    Everything it writes (state, certificates, temp files, its "home") stays in the
    server's directory; nothing persists between starts. ``.endpoint`` and ``.env`` are
    as for ``MotoServer``.
    """

    kind = "localstack"

    def __init__(
        self, *, port: int | None = None, start_timeout: float = 90, stop_timeout: float = 5
    ) -> None:
        # stop_timeout is short on purpose: after serving an SQS long poll, LocalStack
        # 2026.3 stops its services on SIGTERM but then hangs at interpreter exit.
        super().__init__(port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)

    def log_files(self) -> list[Path]:
        return [self.dir / "localstack.out"]

    def server_env(self) -> dict[str, str]:
        """LocalStack's own environment: built from scratch, so that no LocalStack (or
        AWS) setting of the developer's leaks in, and with every directory in ours."""
        d = self.dir
        home, tmp = d / "home", d / "tmp"
        home.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        address = f"{HOST}:{self.port}"
        kept = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ")}
        return {
            **kept,
            "PATH": f"{localstack_venv() / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            # Its files: not /var/lib/localstack, /tmp/localstack or ~/.localstack. It takes
            # itself for a container when the host is one; then it would use /var/lib.
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(d / "filesystem"),
            "CONVEYOR_LOCALSTACK_S3_DIR": str(d / "s3-storage"),
            "LOCALSTACK_VOLUME_DIR": str(d / "volume"),
            "CONFIG_DIR": str(home / ".localstack"),
            # Loopback only: the default server binds 0.0.0.0 whatever GATEWAY_LISTEN says,
            # and without DNS_ADDRESS=0 it starts a DNS server on port 53.
            "GATEWAY_LISTEN": address,
            "GATEWAY_SERVER": "hypercorn",
            "DNS_ADDRESS": "0",
            # Queue URLs as http://127.0.0.1:PORT/queue/REGION/ACCOUNT/NAME.
            "LOCALSTACK_HOST": address,
            "SQS_ENDPOINT_STRATEGY": "path",
            "SERVICES": ",".join(LOCALSTACK_SERVICES),
            "EAGER_SERVICE_LOADING": "1",
            "PERSISTENCE": "0",
            # No calls home.
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            "DISABLE_DEPRECATION_NOTICE": "1",
        }

    def health(self) -> dict[str, str] | None:
        """The services' states from ``GET /_localstack/health``, None if it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/_localstack/health", timeout=2) as r:
                services: dict[str, str] = json.load(r).get("services", {})
                return services
        except (OSError, ValueError):
            return None

    def _ready(self) -> bool:
        services = self.health() or {}
        return all(services.get(name) in ("available", "running") for name in LOCALSTACK_SERVICES)

    def _start(self) -> None:
        python = localstack_venv() / "bin" / "python"
        if not python.exists() or not localstack_installed():
            raise ServerNotInstalled(
                f"LocalStack's virtualenv {localstack_venv()} is missing or out of date"
                f" ({LOCALSTACK_INSTALL} builds it)"
            )
        self._proc = self._spawn(
            [str(python), "-c", LOCALSTACK_MAIN],
            env=self.server_env(),
            log_name="localstack.out",
        )
        self._wait_ready(self._ready)

    def _graceful_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # SIGTERM stops its services; if it then hangs at exit, _kill_all's SIGKILL of the
        # process group follows (nothing persists, so nothing is lost).
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        self._wait_exit(proc, self.stop_timeout)

    def close(self) -> None:
        # Not merely SIGKILL: give it the chance to stop its services first.
        if self.running:
            self.stop()
        super().close()
