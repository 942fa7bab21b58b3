"""Process handling for the benchmark: the services as child processes, the servers' CPU.

Every wait has a deadline (``deadline_loop``); every process started here is stopped by
``stop_all`` (SIGTERM, SIGKILL after a timeout).

The services run with accounts, as a deployment does (``accounts_env``): before the web
starts, ``admin_headers`` makes an admin and an API token with the web's CLI in the run's
database, and the benchmark's HTTP client sends that token with every call. Workers need
none: the paired worker's code comes from ``POST /api/pairings`` made by that client.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from bench import procfs
from bench.procfs import cpu_seconds, runqueue_wait_seconds
from libs.common import settings as settings_module
from tests import servers as test_servers

PYTHON = sys.executable
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


class BenchError(RuntimeError):
    """The benchmark could not produce a valid figure."""


@contextlib.contextmanager
def work_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder for one run: removed after it, unless ``keep``, or it failed."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    except BaseException:
        say(f"work dir kept for inspection: {work}")
        raise
    if keep:
        say(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def deadline_loop(timeout: float, interval: float, what: str) -> Iterator[int]:
    """Yield 0, 1, 2, ... every ``interval`` s; BenchError after ``timeout`` s (bounded twice)."""
    start = time.monotonic()
    for attempt in range(int(timeout / interval) + 2):
        if time.monotonic() - start > timeout:
            break
        yield attempt
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def service_env(**values: str) -> dict[str, str]:
    """This environment without any Conveyor setting or AWS variable, plus ``values``."""
    ours = {f.metadata["env"] for f in fields(settings_module.Settings)}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("AWS_")}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: The admin each run makes in its fresh database, to call the API as.
ADMIN_EMAIL = "bench@bench.example.com"


def accounts_env() -> dict[str, str]:
    """ACCOUNTS=required and a fresh SESSION_SECRET: the services as deployed."""
    return {"ACCOUNTS": "required", "SESSION_SECRET": secrets.token_urlsafe(32)}


def admin_headers(env: dict[str, str], code: Path) -> dict[str, str]:
    """``Authorization: Bearer <token>`` of an admin made in ``env``'s DATABASE_URL by
    ``python -m services.web users create --admin`` (the password on stdin; the CLI
    migrates the database first) and ``users token``, both run from ``code``."""

    def users(*args: str, stdin: str = "") -> str:
        run = subprocess.run(
            [PYTHON, "-m", "services.web", "users", *args], cwd=code, env=env, input=stdin,
            capture_output=True, text=True, timeout=READY_TIMEOUT, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            raise BenchError(f"`users {args[0]}` exited {run.returncode}: {run.stderr[-2000:]}")
        return run.stdout

    users("create", "--admin", ADMIN_EMAIL, stdin=secrets.token_urlsafe(24) + "\n")
    token = users("token", ADMIN_EMAIL, "--name", "benchmark").strip()
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------ servers' CPU


def _process_table() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if stat[0] != "Z":
            parents[int(entry.name)] = int(stat[1])
    return parents


def server_pids(server: Any) -> set[int]:
    """The live processes of a test server (``tests.servers``), best effort: those whose
    environment carries the server's marker variable, any postmaster named by a
    ``postmaster.pid`` in its directory (PostgreSQL overwrites its environment with the
    process title), and all their descendants."""
    marker = getattr(test_servers, "MARKER_ENV", "CONVEYOR_TEST_SERVER_DIR")
    needle = f"{marker}={server.dir}".encode()
    parents = _process_table()
    found: set[int] = set()
    for pid in parents:
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            if needle in f.read().split(b"\0"):
                found.add(pid)
    for pidfile in list(Path(server.dir).glob("**/postmaster.pid"))[:5]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            found.add(int(pidfile.read_text().split()[0]))
    found &= parents.keys()
    for _ in range(100):  # add descendants, level by level
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not more:
            break
        found |= more
    return found


def server_cpu_seconds(server: Any) -> float:
    """CPU time of a server's live processes plus what they reaped (so ended backends count).
    Only differences of two readings mean anything."""
    return sum(cpu_seconds(pid, children=True) or 0.0 for pid in server_pids(server))


def server_peak_rss_kib(server: Any) -> int | None:
    """The largest VmHWM among a server's processes (moto is one process)."""
    peaks = [procfs.status_kib(pid, "VmHWM") for pid in server_pids(server)]
    return max((p for p in peaks if p is not None), default=None)


# ------------------------------------------------------------------------------ services


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    peak_rss_kib: int | None = None
    rss_kib: int | None = None
    cpu_s: float | None = None
    cpu_at_post: float | None = None
    wait_s: float | None = None
    wait_at_post: float | None = None

    @classmethod
    def start(
        cls,
        name: str,
        module: str,
        env: dict[str, str],
        log_dir: Path,
        code: Path,
        args: Sequence[str] = (),
    ) -> Service:
        log = log_dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [PYTHON, "-m", module, *args], cwd=code, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return cls(name, proc, log)

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with code {code}; its log:\n{self.tail()}")

    def sample(self) -> None:
        """Peak RSS (VmHWM), current RSS and CPU time, read while the process is alive."""
        self.peak_rss_kib = procfs.status_kib(self.proc.pid, "VmHWM")
        self.rss_kib = procfs.status_kib(self.proc.pid, "VmRSS")
        self.cpu_s = cpu_seconds(self.proc.pid)
        self.wait_s = runqueue_wait_seconds(self.proc.pid)

    def mark_post(self) -> None:
        self.cpu_at_post = cpu_seconds(self.proc.pid)
        self.wait_at_post = runqueue_wait_seconds(self.proc.pid)

    @property
    def job_cpu_s(self) -> float | None:
        if self.cpu_s is None or self.cpu_at_post is None:
            return None
        return self.cpu_s - self.cpu_at_post

    @property
    def job_wait_s(self) -> float | None:
        """Runnable but waiting for a CPU, from the POST to the end (live threads only)."""
        if self.wait_s is None or self.wait_at_post is None:
            return None
        return self.wait_s - self.wait_at_post

    def figures(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.proc.pid,
            "peak_rss_kib": self.peak_rss_kib,
            "rss_end_kib": self.rss_kib,
            "cpu_s": self.cpu_s,
            "job_cpu_s": self.job_cpu_s,
            "job_runqueue_wait_s": self.job_wait_s,
        }

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


def check(services: Sequence[Service]) -> None:
    for service in services:
        service.check_alive()


def stop_all(services: Sequence[Service], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM all, wait up to ``timeout`` in total, then SIGKILL what is left."""
    for service in services:
        if service.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                service.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for service in services:
        try:
            service.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{service.name} ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                service.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(10)


def wait_ready(client: httpx.Client, services: Sequence[Service]) -> None:
    """Until the web service's ``GET /readyz`` answers 200."""
    last = ""
    for _ in deadline_loop(READY_TIMEOUT, 0.25, "GET /readyz to answer 200"):
        check(services)
        try:
            response = client.get("/readyz", timeout=3.0)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}"
            continue
        if response.status_code == 200:
            return
        last = f"{response.status_code} {response.text[:200]}"
    raise BenchError(f"web not ready: {last}")  # unreachable: deadline_loop raises
