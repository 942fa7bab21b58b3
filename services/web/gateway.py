"""The worker gateway: a lent machine reaches only the web, over one outbound WebSocket.

``GET /api/workers/connect`` (a WebSocket upgrade) with ``Authorization: Bearer <worker
token>`` in the handshake: never in the URL, which access logs keep. The worker's first
frame is ``Hello``; the gateway answers ``Welcome`` and from then on forwards its pool's
tasks (``gateway_consumer.PoolConsumer``, one broker consumer per socket, so several web
instances need no shared memory) and settles its answers.

A socket is closed, and the tasks it held go back to the queue at once, when:
- the worker closes it or its connection drops;
- no frame arrives for ``timeout`` (three heartbeats): ``TIMEOUT``;
- a frame is malformed, of another version, or answers for a task the socket does not
  hold: ``BAD_FRAME``, counted in ``Hub.faults``;
- the worker is revoked: ``REVOKED``, within a second. The revoking web instance closes its
  own sockets at once; the others hear the control broadcast; and each socket checks its
  token again every ``timeout`` in case a broadcast was missed;
- the web shuts down: ``GOING_AWAY``, and the worker connects again (to another instance).

Cancellations reach the worker as ``Control`` frames. No broker credential leaves the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio.to_thread
import msgspec
from kombu import Queue
from kombu.message import Message
from litestar import WebSocket, websocket
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers import WebsocketRouteHandler

from libs.common import frames, messages, topology
from libs.common.consuming import ConsumeLoop, Session
from libs.common.models import CANCELLED, Job
from libs.common.runtime import Components
from services.web.gateway_consumer import Identity, PoolConsumer
from services.web.pairing_api import token_row

log = logging.getLogger(__name__)

#: How long a new socket may take to say Hello.
HELLO_SECONDS = 10.0
#: Missed heartbeats after which a silent worker is dropped.
MISSED_BEATS = 3
#: Cancelled jobs remembered from broadcasts (older ones are looked up).
MAX_REMEMBERED_CANCELS = 10_000


@dataclass(eq=False)
class Link:
    """One connected worker: its socket, its consumer thread and its outgoing frames."""

    socket: WebSocket
    identity: Identity
    timeout: float
    outgoing: asyncio.Queue[frames.ToWorker | tuple[int, str]] = field(
        default_factory=asyncio.Queue
    )
    consumer: PoolConsumer | None = None
    #: The event loop's time of the last frame from the worker.
    last_seen: float = 0.0

    def matches(self, revoked: messages.WorkerRevoked) -> bool:
        ident = self.identity
        names = {revoked.worker_id, revoked.paired_id} - {""}
        return bool(names & {ident.registry_id, ident.paired_id})


class Hub:
    """Every socket of this web process, and the control broadcasts they must hear."""

    def __init__(self, components: Components) -> None:
        self.components = components
        self.links: set[Link] = set()
        self.faults: Counter[str] = Counter()
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        broker = components.broker
        self._control_id = f"web-{uuid.uuid4().hex[:12]}"
        self._control = ConsumeLoop(
            broker, "gateway control", lambda: [self._control_queue()], self._on_control,
            prefetch=10, max_backoff=2.0, on_connect=self._declare,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run_control, name="gateway-control",
                                        daemon=True)  # fmt: skip

    def _control_queue(self) -> Queue:
        broker = self.components.broker
        return topology.control_queue(
            broker.prefix, self._control_id, server_named=broker.kind == "amqp"
        )

    def _declare(self, session: Session) -> None:
        """The control fanout may not exist yet when the web starts before any worker."""
        broker = self.components.broker
        if broker.kind == "amqp":
            topology.control_exchange(broker.prefix).bind(session.conn.default_channel).declare()

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.components.broker.broadcasts:
            self._thread.start()

    async def going_away(self, timeout: float = 10.0) -> None:
        """Close every socket with "going away" and wait (at most ``timeout``) until each
        consumer gave its tasks back: their workers connect again, to another instance."""
        for link in list(self.links):
            link.outgoing.put_nowait((frames.GOING_AWAY, "the server is shutting down"))
        deadline = asyncio.get_running_loop().time() + timeout
        while self.links and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Close what sockets remain (``going_away``), then stop the control loop."""
        await self.going_away()
        self._control.stop.set()
        if self._thread.is_alive():
            await anyio.to_thread.run_sync(self._thread.join, 25.0)
            with contextlib.suppress(Exception):
                self.components.broker.delete_private_queue(self._control_queue())

    def _run_control(self) -> None:
        try:
            self._control.run()
        except Exception:
            log.exception("gateway control loop died", extra={"action": "died"})

    # -- control broadcasts (the control thread) -----------------------------------------
    def _on_control(self, _session: Session, message: Message) -> None:
        try:
            env = messages.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            env = None
        message.ack()
        if env is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.deliver, env)

    def deliver(self, env: messages.Envelope) -> None:
        """A broadcast (the event loop's thread): forward a cancellation to every worker;
        close the sockets of a revoked worker."""
        body = env.body
        for link in list(self.links):
            if isinstance(body, messages.WorkerRevoked):
                if link.matches(body):
                    link.outgoing.put_nowait((frames.REVOKED, "this worker was revoked in the app"))
            elif isinstance(body, messages.JobCancelled):
                link.outgoing.put_nowait(frames.Control(env))
        if isinstance(body, messages.JobCancelled):
            self._cancelled[env.job_id] = None
            while len(self._cancelled) > MAX_REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)

    def is_cancelled(self, job_id: str) -> bool:
        """A consumer thread's question: heard as a broadcast, else the job's state."""
        if job_id in self._cancelled:
            return True
        with self.components.sessions() as session:
            job = session.get(Job, job_id)
            return job is not None and job.state == CANCELLED

    def revoked(self, worker_id: str, paired_id: str) -> None:
        """Called from a request's thread right after a revocation commits here."""
        if self._loop is not None:
            env = messages.envelope("", messages.WorkerRevoked(worker_id, paired_id))
            self._loop.call_soon_threadsafe(self.deliver, env)

    # -- one socket ----------------------------------------------------------------------
    async def serve(self, socket: WebSocket, key: bytes | None) -> None:
        scheme, _, token = socket.headers.get("authorization", "").partition(" ")
        await socket.accept()
        if key is None:
            await socket.close(frames.UNAUTHORIZED, "pairing is not configured on this server")
            return
        if scheme.lower() != "bearer" or not token.strip():
            await socket.close(frames.UNAUTHORIZED, "a worker token is required (Bearer)")
            return
        worker = await anyio.to_thread.run_sync(self._token, key, token.strip())
        if worker is None:
            await socket.close(frames.UNAUTHORIZED, "this worker token is not valid")
            return
        try:
            hello = await asyncio.wait_for(_receive(socket), HELLO_SECONDS)
        except (TimeoutError, frames.FrameError, _Disconnected) as exc:
            await self._refuse(socket, exc)
            return
        if not isinstance(hello, frames.Hello):
            await self._refuse(socket, frames.FrameError("the first frame must be Hello"))
            return
        await self._run(socket, key, token.strip(), worker, hello)

    def _token(self, key: bytes, token: str) -> tuple[str, str, str] | None:
        with self.components.sessions() as session:
            try:
                row = token_row(session, key, token)
            except HTTPException:
                return None
            return row.worker_id, row.pool, row.name

    async def _refuse(self, socket: WebSocket, exc: BaseException) -> None:
        if isinstance(exc, _Disconnected):
            return
        reason = str(exc) if isinstance(exc, frames.FrameError) else "no Hello frame in time"
        self.faults["hello"] += 1
        await _close(socket, frames.BAD_FRAME, reason)

    async def _run(
        self,
        socket: WebSocket,
        key: bytes,
        token: str,
        worker: tuple[str, str, str],
        hello: frames.Hello,
    ) -> None:
        paired_id, pool, name = worker
        settings = self.components.settings
        identity = Identity(f"{paired_id[:12]}.{hello.worker_id}", paired_id, pool, name, hello)
        timeout = max(5.0, MISSED_BEATS * settings.heartbeat_seconds)
        link = Link(socket, identity, timeout)
        loop = asyncio.get_running_loop()

        def post(item: frames.ToWorker | tuple[int, str]) -> None:
            loop.call_soon_threadsafe(link.outgoing.put_nowait, item)

        consumer = PoolConsumer(
            self.components.broker, identity, send=post,
            fault=lambda code, why: post((code, why)), cancelled=self.is_cancelled,
        )  # fmt: skip
        link.consumer = consumer
        self.links.add(link)
        log.info(
            "gateway: worker %s (%s) connected for pool %s", identity.registry_id, name, pool,
            extra={"action": "gateway_connect", "worker_id": identity.registry_id},
        )  # fmt: skip
        welcome = frames.Welcome(identity.registry_id, pool, settings.heartbeat_seconds, timeout)
        await socket.send_bytes(frames.encode(welcome))
        consumer.start()
        tasks = [
            asyncio.create_task(_send_loop(link)),
            asyncio.create_task(self._receive_loop(link)),
            asyncio.create_task(self._watch(link, key, token)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self.links.discard(link)
            consumer.stop()
            await anyio.to_thread.run_sync(consumer.join, 30.0)
            await _close(socket, 1000, "")
            log.info(
                "gateway: worker %s disconnected", identity.registry_id,
                extra={"action": "gateway_disconnect", "worker_id": identity.registry_id},
            )  # fmt: skip

    async def _receive_loop(self, link: Link) -> None:
        consumer = link.consumer
        assert consumer is not None
        while True:
            try:
                frame = await _receive(link.socket)
            except _Disconnected:
                return
            except frames.FrameError as exc:
                self._fault(link, "malformed", str(exc))
                return
            link.last_seen = asyncio.get_running_loop().time()
            if isinstance(frame, frames.Hello):
                self._fault(link, "hello", "Hello was already said on this socket")
                return
            consumer.commands.put(frame)

    def _fault(self, link: Link, kind: str, reason: str) -> None:
        self.faults[kind] += 1
        log.warning(
            "gateway: closing worker %s: %s", link.identity.registry_id, reason,
            extra={"action": "gateway_bad_frame", "worker_id": link.identity.registry_id},
        )  # fmt: skip
        link.outgoing.put_nowait((frames.BAD_FRAME, reason))

    async def _watch(self, link: Link, key: bytes, token: str) -> None:
        """Drop a silent worker; check the token again every ``timeout`` (a missed
        revocation broadcast)."""
        loop = asyncio.get_running_loop()
        link.last_seen = loop.time()
        checked = loop.time()
        while True:
            await asyncio.sleep(0.5)
            now = loop.time()
            if now - link.last_seen > link.timeout:
                self.faults["timeout"] += 1
                link.outgoing.put_nowait((frames.TIMEOUT, f"no frame for {link.timeout:.0f} s"))
            if now - checked > link.timeout:
                checked = now
                if await anyio.to_thread.run_sync(self._token, key, token) is None:
                    link.outgoing.put_nowait((frames.REVOKED, "this worker was revoked in the app"))


class _Disconnected(Exception):
    """The worker closed the socket, or its connection dropped."""


async def _receive(socket: WebSocket) -> frames.FromWorker:
    event = await socket.receive()
    if event["type"] == "websocket.disconnect":
        raise _Disconnected
    data = event.get("bytes")
    if not isinstance(data, bytes):
        data = str(event.get("text") or "").encode()
    return frames.from_worker(data)


async def _send_loop(link: Link) -> None:
    """Send frames in order; a ``(code, reason)`` closes the socket and ends the loop."""
    while True:
        item = await link.outgoing.get()
        if isinstance(item, tuple):
            code, reason = item
            await _close(link.socket, code, reason)
            return
        await link.socket.send_bytes(frames.encode(item))


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # already closed by the peer or by us
        await socket.close(code, reason[:120])


def handler(get_key: Callable[[State], bytes | None]) -> WebsocketRouteHandler:
    @websocket(frames.PATH)
    async def connect(socket: WebSocket, state: State) -> None:
        """The worker gateway (WebSocket): a paired worker's tasks, results and progress.
        Authenticated by the worker token in the handshake's Authorization header."""
        hub: Hub = state.gateway
        await hub.serve(socket, get_key(state))

    return connect
