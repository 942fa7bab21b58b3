"""The Litestar application: the API, the UI page and the outbox relay.

In the embedded all-in-one (no ``BROKER_URL``), the app's lifespan also runs the
dispatcher and one worker in this process, on the in-process broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from litestar import Litestar, MediaType, Request, get
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig
from litestar.response import Response

from libs.common import db, messages
from libs.common.models import Worker
from libs.common.outbox import Relay
from libs.common.runtime import Components
from libs.common.similarity import VectorIndex
from services.dispatcher.service import Dispatcher
from services.web import auth, auth_middleware, gateway
from services.web.auth_api import AuthController, TokensController, UsersController
from services.web.jobs_api import JobsController
from services.web.pairing_api import PairedWorkersController, pairing_state
from services.web.pairing_codes_api import PairingsController
from services.web.task_urls_api import TaskUrlsController
from services.web.tracks_api import TracksController
from services.web.workers_api import WorkersController

log = logging.getLogger(__name__)
UI = Path(__file__).with_name("ui") / "index.html"
#: The page's accounts script (login, invite page, account menu, users panel).
ACCOUNT_JS = UI.with_name("account.js")


def internal_error(request: Request, exc: Exception) -> Response[dict[str, object]]:
    """Log the traceback for the operator; the user gets a short, honest message."""
    log.error(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc,
        extra={"action": "http_500"},
    )  # fmt: skip
    detail = "internal error: the server log has the details"
    return Response({"status_code": 500, "detail": detail}, status_code=500)


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, str]]:
    """The database and the broker are reachable (503 names what is not)."""
    c: Components = state.components
    checks: dict[str, str] = {}
    for name, probe in (("database", lambda: db.ping(c.engine)), ("broker", c.broker.ping)):
        try:
            await anyio.to_thread.run_sync(probe)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unreachable: {type(exc).__name__}: {exc}"[:300]
    ok = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ready" if ok else "unavailable", **checks}, status_code=200 if ok else 503
    )


@get(["/", "/invite"], media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
def index() -> str:
    """The UI: one page. ``/invite#cvi_…`` is the same page, redeeming the invitation in
    the fragment, which the browser never sends to a server."""
    return UI.read_text(encoding="utf-8")


@get("/ui/account.js", media_type="text/javascript", include_in_schema=False, sync_to_thread=False)
def account_js() -> str:
    return ACCOUNT_JS.read_text(encoding="utf-8")


def create_app(components: Components, *, embedded: bool | None = None) -> Litestar:
    embedded = components.settings.embedded if embedded is None else embedded
    hub = gateway.Hub(components)
    accounts = auth.auth_state(components.settings, components.sessions)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        relay = Relay(components.sessions, components.broker)
        app.state.relay = relay
        app.state.vectors = VectorIndex(components.sessions)
        background = _Embedded(components) if embedded else None
        if background:
            background.start()
        relay.start()
        hub.start()
        try:
            yield
        finally:
            await hub.stop()
            relay.stop()
            if background:
                await anyio.to_thread.run_sync(background.stop)

    return Litestar(
        route_handlers=[
            JobsController,
            TracksController,
            WorkersController,
            PairingsController,
            PairedWorkersController,
            TaskUrlsController,
            AuthController,
            TokensController,
            UsersController,
            gateway.handler(lambda state: state.pairing.key),
            healthz,
            readyz,
            index,
            account_js,
        ],
        state=State(
            {
                "components": components,
                "pairing": pairing_state(components.settings, embedded),
                "gateway": hub,
                "auth": accounts,
            }
        ),
        middleware=auth_middleware.middleware(components.settings, accounts),
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(title="Conveyor", version="0.1.0", path="/schema"),
        logging_config=None,
        exception_handlers={500: internal_error},
    )


class _Embedded:
    """The dispatcher and a worker, in this process, for the all-in-one default."""

    def __init__(self, components: Components) -> None:
        from services.worker.worker import Worker  # only the all-in-one pays for librosa

        c = components
        self.sessions = c.sessions
        self.dispatcher = Dispatcher(c.settings, c.sessions, c.storage, c.broker)
        self.worker = Worker(c.settings, c.storage, c.broker)
        self._thread = threading.Thread(target=self.worker.run, name="worker", daemon=True)

    def start(self) -> None:
        log.info(
            "embedded mode (no BROKER_URL): running the dispatcher and a worker in this process",
            extra={"action": "embedded"},
        )
        self.dispatcher.start()
        self.dispatcher.loops[0].connected.wait(10)  # topology declared before workers bind
        self._thread.start()

    def stop(self) -> None:
        self.worker.request_stop()
        self._thread.join(self.worker.settings.shutdown_grace_seconds + 5)
        self._await_last_heartbeat()
        self.dispatcher.stop.set()
        self.dispatcher.join(5)

    def _await_last_heartbeat(self, timeout: float = 3.0) -> None:
        """Let the dispatcher record the worker's "stopped" (this broker forgets at exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.sessions() as session:
                worker = session.get(Worker, self.worker.id)
            if worker is not None and worker.state == messages.W_STOPPED:
                return
            time.sleep(0.05)
