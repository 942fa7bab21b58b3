"""Run Conveyor's real entry points as processes and talk to them over HTTP.

Every wait polls a condition with a deadline; every process is stopped at teardown.

Accounts: ``Services.configure`` runs the web with ``ACCOUNTS=required`` and a random
``SESSION_SECRET``, and makes an admin and an API token of theirs with the web's own CLI
(``users create --admin``, the password on stdin; ``users token``) in the test's
database before anything starts. Every HTTP call of a test goes through
``Services.client``, which carries ``Authorization: Bearer <token>``. Only the newcomer's
flow on the embedded default bound to loopback runs without accounts
(``configure_login_free``). Workers need no user token: the pairing code they
get comes from ``POST /api/pairings`` by the admin's client.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


#: The admin the harness makes in each test's database, and logs in as (with a token).
ADMIN_EMAIL = "admin@e2e.example.com"
#: Settings that must not leak from the test's own environment into the services'.
ACCOUNT_SETTINGS = ("ACCOUNTS", "SESSION_SECRET")


@dataclass(frozen=True)
class Admin:
    """An admin account made through the CLI, and an API token of theirs."""

    email: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def secret_strings(self) -> list[str]:
        """What must appear in no log: the password, the token and its part after ``cvu_``."""
        return [self.password, self.token, self.token.split("_", 1)[1]]


def accounts_env() -> dict[str, str]:
    """ACCOUNTS=required with a fresh SESSION_SECRET (32+ random characters)."""
    return {"ACCOUNTS": "required", "SESSION_SECRET": secrets.token_urlsafe(32)}


def users_cli(env: dict[str, str], *args: str, stdin: str = "") -> str:
    """``python -m services.web users ARGS`` with ``env`` (its DATABASE_URL): its stdout;
    AssertionError (with its stderr, which names no secret) if it fails."""
    run = subprocess.run(
        [sys.executable, "-m", "services.web", "users", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    if run.returncode != 0:
        raise AssertionError(f"`users {args[0]}` exited {run.returncode}: {run.stderr[-2000:]}")
    return run.stdout


def make_admin(env: dict[str, str]) -> Admin:
    """An admin in ``env``'s database (the CLI migrates it first, as the web does) and an
    API token of theirs: the password goes on stdin, the token comes back on stdout."""
    password = secrets.token_urlsafe(24)
    users_cli(env, "create", "--admin", ADMIN_EMAIL, "--name", "E2E admin", stdin=password + "\n")
    token = users_cli(env, "token", ADMIN_EMAIL, "--name", "e2e harness").strip()
    assert token.startswith("cvu_") and "\n" not in token, "users token printed more than it"
    return Admin(ADMIN_EMAIL, password, token)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def make_csv(path: Path, rows: int, *, bad_every: int = 0) -> None:
    """``id,name,age,note``: ages are invalid every ``bad_every`` rows; some notes span lines."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "name", "age", "note"])
        for i in range(rows):
            age = "unknown" if bad_every and i % bad_every == 0 else str(20 + i % 50)
            note = 'two\nlines, "quoted"' if i % 997 == 0 else "plain"
            writer.writerow([i, f"  name {i} ", age, note])


SPEC = (
    '{"columns": [{"name": "id", "type": "int"}, {"name": "name", "trim": true, "case": "upper"},'
    ' {"name": "age", "type": "int"}, {"name": "note"}]}'
)


def expected_output(rows: int, *, bad_every: int = 0) -> list[list[str]]:
    out = [["id", "name", "age", "note"]]
    for i in range(rows):
        if bad_every and i % bad_every == 0:
            continue
        note = 'two\nlines, "quoted"' if i % 997 == 0 else "plain"
        out.append([str(i), f"NAME {i}", str(20 + i % 50), note])
    return out


@dataclass
class Services:
    """The three entry points as processes, sharing one environment; ``admin`` (None with
    accounts off) is who the test is, and ``client`` makes its HTTP calls as them."""

    tmp: Path
    env: dict[str, str]
    admin: Admin | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _client: httpx.Client | None = None

    @classmethod
    def configure(cls, tmp: Path, **settings: str) -> Services:
        """The services' environment, ``settings`` over the harness's, with ACCOUNTS=required
        and an admin with a token, made in DATABASE_URL's database now."""
        return cls._configure(tmp, True, settings)

    @classmethod
    def configure_login_free(cls, tmp: Path, **settings: str) -> Services:
        """Like ``configure`` but ACCOUNTS left unset and no admin: the newcomer's embedded
        default on loopback, which opens with no login."""
        return cls._configure(tmp, False, settings)

    @classmethod
    def _configure(cls, tmp: Path, accounts: bool, settings: dict[str, str]) -> Services:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BROKER_", "DATABASE_")) and k not in ACCOUNT_SETTINGS
        }
        env.update(
            PORT=str(free_port()),
            STORAGE_URL=str(tmp / "storage"),
            QUEUE_PREFIX=f"e{uuid.uuid4().hex[:10]}",
            LOG_LEVEL="INFO",
            SHUTDOWN_GRACE_SECONDS="20",
            PYTHONUNBUFFERED="1",
        )
        if accounts:
            env.update(accounts_env())
        env.update(settings)
        return cls(tmp, env, make_admin(env) if accounts else None)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def headers(self) -> dict[str, str]:
        """The admin's ``Authorization`` header (none with accounts off)."""
        return self.admin.headers if self.admin is not None else {}

    @property
    def client(self) -> httpx.Client:
        """An HTTP client as the admin, for ``base`` (absolute URLs work too: another web
        instance). A request's own ``Authorization`` (a worker token) replaces theirs."""
        if self._client is None or self._client.is_closed:
            self._client = httpx.Client(base_url=self.base, headers=self.headers, timeout=10)
        return self._client

    def start(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_with_env(
        self, name: str, env: dict[str, str], module: str, *args: str
    ) -> subprocess.Popen[bytes]:
        """Like ``start``, with an environment of its own (a paired worker knows only the
        web's address, none of the services' settings); stopped by ``stop_all`` too."""
        log = (self.tmp / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_web(self) -> None:
        self.start("web", "services.web")
        wait_for(self._ready, 60, f"{self.base}/readyz\n{self.logs()}")

    def start_pipeline(self, workers: int = 2) -> None:
        """Web (waited for), the dispatcher, and ``workers`` workers named w1, w2, …"""
        self.start_web()
        self.start("dispatcher", "services.dispatcher")
        for n in range(1, workers + 1):
            self.start(f"worker{n}", "services.worker", "--name", f"w{n}")

    def _ready(self) -> bool:
        return web_ready(self.procs["web"], self.base, self.logs, self.headers)

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name in self.procs:
            text = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def submit(self, path: Path, mapping: str | None = SPEC) -> str:
        with path.open("rb") as f:
            data = {"mapping": mapping} if mapping else {}
            response = self.client.post(
                "/api/jobs/csv", files={"file": (path.name, f)}, data=data, timeout=120
            )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/jobs/{job_id}", timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_state(self, job_id: str, states: set[str], timeout: float = 180) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in states else None

        return dict(wait_for(reached, timeout, f"job {job_id} to reach {states}\n{self.logs()}"))

    def output_rows(self, job_id: str) -> list[list[str]]:
        response = self.client.get(f"/api/jobs/{job_id}/output", timeout=120)
        assert response.status_code == 200, response.text
        return list(csv.reader(io.StringIO(response.text, newline="")))

    def errors(self, job_id: str, limit: int = 1000) -> dict[str, Any]:
        response = self.client.get(f"/api/jobs/{job_id}/errors", params={"limit": limit})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def stop_all(self, timeout: float = 30) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        for log in self._logs:
            log.close()
        if self._client is not None:
            self._client.close()
        return codes


def web_ready(
    web: subprocess.Popen[bytes],
    base: str,
    logs: Callable[[], str],
    headers: dict[str, str] | None = None,
) -> bool:
    """Whether the web service at ``base`` answers ``/readyz``; fails if it has exited."""
    if web.poll() is not None:
        raise AssertionError(f"web exited early\n{logs()}")
    try:
        return httpx.get(f"{base}/readyz", headers=headers, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
