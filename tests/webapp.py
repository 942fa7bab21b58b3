"""The web app in one process, for API tests: ``start_app`` builds it with its lifespan.

The app runs on SQLite in ``tmp_path``, a local storage folder and kombu's in-process
``memory://`` transport. In the embedded default the lifespan runs the dispatcher and a
worker in this process, so a submitted job really goes through fan-out, the worker and
fan-in. The memory transport's queues are process-global, so every app gets its own
``QUEUE_PREFIX``.

With ``ACCOUNTS="required"`` the app starts with an admin account (``ADMIN_EMAIL``) and
its client sends that admin's API token (``Authorization: Bearer``) on every request;
``Conveyor.client_for`` makes clients of other users (``login=False``: no admin, no
header, for tests of logging in).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from libs.common import accounts, users
from libs.common import settings as settings_module
from libs.common.runtime import Components, build
from services.web.app import create_app

POLL_SECONDS = 30.0
POLL_STEP = 0.05
CSV_URL = "/api/jobs/csv"
SESSION_SECRET = "test-session-secret-" * 2
ADMIN_EMAIL = "admin@example.com"
PASSWORD = "correct horse battery staple"


# --------------------------------------------------------------------------- harness


def poll(
    fetch: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float = POLL_SECONDS
) -> Any:
    """``fetch()`` until ``done`` says yes; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not {what} within {timeout} s: {value}")
        time.sleep(POLL_STEP)


@dataclass
class Conveyor:
    client: TestClient[Any]
    components: Components
    storage_dir: Path

    # -- accounts (ACCOUNTS=required) ----------------------------------------------------
    def user(self, email: str, role: str = accounts.MEMBER) -> tuple[str, str]:
        """A new account and an API token of its: (user id, token)."""
        with self.components.sessions() as session, session.begin():
            user = users.create_user(session, email, "", PASSWORD, role)
            _, token = users.create_api_token(session, user, "tests")
            return user.id, token

    def client_for(self, token: str | None) -> TestClient[Any]:
        """A client of this app (its lifespan already running) that sends ``token`` as
        ``Authorization: Bearer`` on every request (None: no header, anonymous)."""
        other: TestClient[Any] = TestClient(self.client.app)
        other.blocking_portal = self.client.blocking_portal
        if token is not None:
            other.headers["Authorization"] = f"Bearer {token}"
        return other

    def member(self, email: str) -> TestClient[Any]:
        """A client logged in (by API token) as a new member."""
        return self.client_for(self.user(email)[1])

    # -- requests ------------------------------------------------------------------------
    def submit(
        self,
        content: bytes,
        mapping: str | dict[str, Any] | None = None,
        filename: str = "people.csv",
    ) -> httpx.Response:
        data = {}
        if mapping is not None:
            data["mapping"] = mapping if isinstance(mapping, str) else json.dumps(mapping)
        return self.client.post(CSV_URL, files={"file": (filename, content, "text/csv")}, data=data)

    def submit_ok(self, content: bytes, mapping: str | dict[str, Any] | None = None) -> str:
        response = self.submit(content, mapping)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_for(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Poll the job until ``done(job)``; fail with the last view after the deadline."""
        job: dict[str, Any] = poll(lambda: self.job(job_id), done, f"job {job_id} {what}")
        return job

    def wait_final(self, job_id: str) -> dict[str, Any]:
        final = {"completed", "failed", "cancelled"}
        return self.wait_for(job_id, lambda j: j["state"] in final, "final")

    def errors(self, job_id: str, **params: int) -> dict[str, Any]:
        response = self.client.get(f"/api/jobs/{job_id}/errors", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    # -- storage -------------------------------------------------------------------------
    def stored_files(self) -> list[str]:
        """Every file under the storage folder (temporary files included)."""
        if not self.storage_dir.exists():
            return []
        return sorted(
            str(p.relative_to(self.storage_dir)) for p in self.storage_dir.rglob("*") if p.is_file()
        )

    def uploads(self) -> list[str]:
        return [name for name in self.stored_files() if name.startswith("uploads/")]


StartApp = Callable[..., Conveyor]


def make_start_app(tmp_path: Path) -> Iterator[StartApp]:
    """Start the app (lifespan included) once per test: ``start_app(embedded=..., **env)``.

    ``embedded=None`` leaves the choice to the app (the default: embedded without
    BROKER_URL). Extra keyword arguments are environment variables. With
    ``ACCOUNTS="required"`` (SESSION_SECRET has a default), the client is an admin's unless
    ``login=False``.
    """
    with ExitStack() as stack:
        started: list[Conveyor] = []

        def start(*, embedded: bool | None = None, login: bool = True, **env: str) -> Conveyor:
            assert not started, "one app per test (they would share the database)"
            storage_dir = tmp_path / "storage"
            environ = {
                "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
                "STORAGE_URL": str(storage_dir),
                "QUEUE_PREFIX": f"t{uuid.uuid4().hex[:10]}",
                "CHUNK_ROWS": "100",
                "SHUTDOWN_GRACE_SECONDS": "5",
                "LOG_LEVEL": "WARNING",
                **env,
            }
            if environ.get("ACCOUNTS") == settings_module.ACCOUNTS_REQUIRED:
                environ.setdefault("SESSION_SECRET", SESSION_SECRET)
            components = build(settings_module.load(environ))
            stack.callback(components.engine.dispose)
            if embedded is None:
                app = create_app(components)
            else:
                app = create_app(components, embedded=embedded)
            client = stack.enter_context(TestClient(app))
            conveyor = Conveyor(client, components, storage_dir)
            if components.settings.accounts_required and login:
                _, token = conveyor.user(ADMIN_EMAIL, accounts.ADMIN)
                client.headers["Authorization"] = f"Bearer {token}"
            started.append(conveyor)
            return conveyor

        yield start


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])
