"""A paired worker's link to the web's gateway: tasks over one outbound WebSocket.

``GatewayLoop`` stands in for ``ConsumeLoop`` (same ``run``, ``stop``, ``connected``,
``cancel_consumer`` and callbacks), so ``Worker`` runs unchanged: the tasks it gets are
``GatewayMessage``s, and its ``session.publisher`` turns what it would publish into
frames: a task's result into ``Done`` (the gateway publishes it with a confirm, then
acks), a retry into ``Retry``, a dead letter into ``Dead``, progress and heartbeats into
``Progress`` and ``Beat``. The token travels in the handshake's ``Authorization`` header.

The loop reconnects with exponential backoff (from 0.5 s again once it was connected)
and jitter (a wait of 50-100 % of the backoff), so after a web restart or a
deploy it resumes with the same token, and a fleet of workers does not reconnect in step.
A close with ``REVOKED`` or ``UNAUTHORIZED`` stops it for good (``on_revoked``).
Tasks of an earlier socket were given back by the gateway when that socket closed: their
results are dropped here (the task runs again; effects are keyed by task id).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from threading import Event
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from libs.common import frames, messages

log = logging.getLogger(__name__)

#: Seconds to open the socket and hear ``Welcome``.
OPEN_SECONDS = 10.0
#: The largest frame accepted (a task message is small; a result carries its row errors).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: WebSocket pings: a link that went silent (no reset) is given up after about 15 s, and
#: the worker connects again; the gateway gave its tasks back by then (3 missed beats).
PING_SECONDS, PING_TIMEOUT = 5.0, 10.0


def gateway_url(server: str) -> str:
    """``https://app`` -> ``wss://app/api/workers/connect`` (``http`` -> ``ws``)."""
    parts = urlsplit(server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + frames.PATH, "", ""))


@dataclass(frozen=True)
class GatewayTarget:
    """Where a paired worker's gateway is, and the token it shows there."""

    url: str
    token: str

    def __repr__(self) -> str:  # never the token
        return f"GatewayTarget({self.url!r})"


class Revoked(Exception):
    """The gateway refused this worker's token: revoked, or not valid (the server's key
    changed, or an all-in-one without WORKER_TOKEN_KEY restarted)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class GatewayMessage:
    """A task as the worker sees it: ``body`` is the envelope; settling sends a frame."""

    session: GatewaySession
    delivery: int
    body: bytes
    task_id: str
    settled: bool = False

    def ack(self) -> None:
        """Without a result: the worker skips a task of a cancelled job."""
        if not self.settled:
            self.session.settle(self, frames.Skip(self.delivery))


class GatewayPublisher:
    """What ``Worker`` publishes, as frames on the current socket."""

    def __init__(self, session: GatewaySession) -> None:
        self.session = session

    def event(self, env: messages.Envelope) -> None:
        body, session = env.body, self.session
        if isinstance(body, messages.TaskResult):
            held = session.held.get(body.task_id)
            if held is None:
                log.debug("result of %s dropped: its socket closed", body.task_id)
                return
            session.settle(held, frames.Done(held.delivery, body))
        elif isinstance(body, messages.TrackProgress):
            held = session.held.get(body.task_id)
            if held is not None:
                session.send(frames.Progress(held.delivery, body.track_id, body.stage))
        elif isinstance(body, messages.Heartbeat):
            session.send(
                frames.Beat(
                    body.state, body.in_flight, body.processed, body.failed,
                    body.items_per_second, body.current_job, body.interval, body.started_at,
                )
            )  # fmt: skip

    def retry(self, message: GatewayMessage, _env: messages.Envelope, delay: float) -> None:
        self.session.settle(message, frames.Retry(message.delivery, delay))

    def dead_letter(self, message: GatewayMessage, cause: str) -> None:
        self.session.settle(message, frames.Dead(message.delivery, cause[:2000]))


class GatewaySession:
    """One socket: what ``Worker`` uses as ``session`` (``publisher``; ``conn`` unused)."""

    def __init__(self, ws: ClientConnection, welcome: frames.Welcome) -> None:
        self.conn = ws
        self.welcome = welcome
        self.held: dict[str, GatewayMessage] = {}
        self.publisher = GatewayPublisher(self)

    def send(self, frame: frames.FromWorker) -> None:
        self.conn.send(frames.encode(frame))

    def settle(self, message: GatewayMessage, frame: frames.FromWorker) -> None:
        if message.session is not self or message.settled:
            return  # an earlier socket's task: the gateway gave it back already
        message.settled = True
        self.held.pop(message.task_id, None)
        self.send(frame)

    def take(self, task: frames.Task) -> GatewayMessage:
        body = task.envelope.body
        task_id = str(getattr(body, "task_id", ""))
        message = GatewayMessage(self, task.delivery, messages.encode(task.envelope), task_id)
        self.held[task_id] = message
        return message


@dataclass
class GatewayLoop:
    """``ConsumeLoop``'s counterpart for a gateway worker (see the module's docstring)."""

    url: str
    token: str
    hello: Callable[[], frames.Hello]
    # The worker's own callbacks, typed for ConsumeLoop's Session and Message.
    on_message: Callable[[Any, Any], None]
    on_control: Callable[[Any, Any], None]
    on_revoked: Callable[[], None]
    tick: Callable[[Any], None] | None = None
    on_connect: Callable[[Any], None] | None = None
    wait_seconds: Callable[[], float] | None = None
    name: str = "gateway"
    max_backoff: float = 30.0
    stop: Event = field(default_factory=Event)
    connected: Event = field(default_factory=Event)
    last_error: str | None = None
    #: Why the gateway refused this worker for good (its close reason), once it did.
    refused: str | None = None
    _session: GatewaySession | None = field(default=None, init=False, repr=False)

    def __repr__(self) -> str:  # never the token
        return f"GatewayLoop({self.url!r})"

    def cancel_consumer(self) -> None:
        """Stop receiving tasks (the loop's own thread): those held stay ours to settle."""
        if self._session is not None:
            self._session.send(frames.Pause())

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self._run_connected()
                backoff = 0.5
            except Revoked as exc:
                log.warning("the gateway refused this worker: %s", exc, extra={"action": "revoked"})
                self.refused = str(exc)
                self.on_revoked()
                self.stop.set()
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, InvalidURI,
                    frames.FrameError) as exc:  # fmt: skip
                if self.connected.is_set():  # it worked until now: start the backoff over
                    backoff = 0.5
                self.connected.clear()
                self._session = None
                if self.stop.is_set():
                    break
                self.last_error = _describe(exc)
                delay = random.uniform(backoff / 2, backoff)  # jitter: no fleet in step
                log.warning(
                    "%s: %s; reconnecting in %.1fs", self.name, self.last_error, delay,
                    extra={"action": "reconnect", "consumer": self.name},
                )  # fmt: skip
                self.stop.wait(delay)
                backoff = min(self.max_backoff, backoff * 2)

    def _run_connected(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with connect(
            self.url, additional_headers=headers, open_timeout=OPEN_SECONDS,
            max_size=MAX_FRAME_BYTES, close_timeout=5, ping_interval=PING_SECONDS,
            ping_timeout=PING_TIMEOUT,
        ) as ws:  # fmt: skip
            try:
                session = self._handshake(ws)
                self._serve(ws, session)
            except ConnectionClosed as exc:
                _raise_if_refused(exc)
                raise

    def _handshake(self, ws: ClientConnection) -> GatewaySession:
        ws.send(frames.encode(self.hello()))
        welcome = frames.to_worker(ws.recv(timeout=OPEN_SECONDS))
        if not isinstance(welcome, frames.Welcome):
            raise frames.FrameError(f"expected Welcome, got {type(welcome).__name__}")
        session = self._session = GatewaySession(ws, welcome)
        if self.on_connect:
            self.on_connect(session)
        self.connected.set()
        self.last_error = None
        log.info(
            "%s: connected as %s (pool %s)", self.name, welcome.worker_id, welcome.pool,
            extra={"action": "consume"},
        )  # fmt: skip
        return session

    def _serve(self, ws: ClientConnection, session: GatewaySession) -> None:
        while not self.stop.is_set():
            wait = self.wait_seconds() if self.wait_seconds else 0.5
            try:
                data = ws.recv(timeout=wait)
            except TimeoutError:
                data = None
            if data is not None:
                self._dispatch(session, frames.to_worker(data))
            if self.tick:
                self.tick(session)

    def _dispatch(self, session: GatewaySession, frame: frames.ToWorker) -> None:
        if isinstance(frame, frames.Task):
            self.on_message(session, session.take(frame))
        elif isinstance(frame, frames.Control):
            control = GatewayMessage(session, 0, messages.encode(frame.envelope), "", True)
            self.on_control(session, control)
        else:
            raise frames.FrameError(f"unexpected {type(frame).__name__} frame")


def _raise_if_refused(exc: ConnectionClosed) -> None:
    close = exc.rcvd
    if close is not None and close.code in (frames.REVOKED, frames.UNAUTHORIZED):
        raise Revoked(close.reason or "revoked", close.code) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
        reason = f": {exc.rcvd.reason}" if exc.rcvd.reason else ""
        return f"the gateway closed the connection ({exc.rcvd.code}{reason})"
    return f"cannot reach the gateway ({type(exc).__name__}: {exc})"


def hello_from(worker: Any, concurrency: int) -> frames.Hello:
    """The ``Hello`` of ``worker`` (a ``Worker``), from what its heartbeats say."""
    beats = worker.beats
    return frames.Hello(
        worker_id=worker.id[:255], name=worker.name[:255], concurrency=min(64, concurrency),
        host=beats.host[:255], pid=beats.pid, version=beats.version[:255],
        capabilities=beats.capabilities,
    )  # fmt: skip


__all__: Sequence[str] = [
    "GatewayLoop", "GatewayMessage", "GatewayTarget", "Revoked", "gateway_url", "hello_from",
]  # fmt: skip
