"""The worker: consumes its pool's task queue and runs handlers off the connection's thread.

The loop thread owns the connection. It hands each task to a thread pool and settles
finished ones in ``_tick``: publish the result (confirmed), then ack; or retry later, or
dead-letter with the cause. ``_tick`` also keeps the lease of each running task (on SQS a
received message goes back to the queue after its visibility timeout unless extended), and
sends the worker's heartbeats (``heartbeat.py``), the last one as it stops.
Stopping is one sequence: stop fetching, let in-flight tasks finish within the grace
period, then close, so the broker hands back whatever was not acked.

Cancellations and revocations arrive on the worker's own control queue (``control.py``),
consumed by a second loop with its own connection (on SQS a receive waits on one queue at
a time: a shared loop would wait on the idle control queue between tasks).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import msgspec
import threadpoolctl
from kombu import Queue
from kombu.message import Message

from libs.common import messages, topology
from libs.common.broker import Broker
from libs.common.consuming import ConsumeLoop, Session
from libs.common.retry import DeadLetter, RetryPolicy, decide, describe
from libs.common.settings import Settings
from libs.common.storage import Storage
from services.worker import scratch
from services.worker.canary import handle_canary
from services.worker.control import Orders
from services.worker.csv_map import handle_csv
from services.worker.gateway_link import GatewayLoop, GatewayTarget, hello_from
from services.worker.heartbeat import Heartbeats, Snapshot
from services.worker.status import broker_host
from services.worker.task_urls import TaskUrls
from services.worker.tracks import AudioConfig, handle_tracks

log = logging.getLogger(__name__)

#: At shutdown, how long to wait for the control loop's current receive (SQS: at most 20 s).
CONTROL_JOIN_SECONDS = 25.0
#: The longest wait between the control connection's reconnection attempts.
CONTROL_MAX_BACKOFF = 2.0


@dataclass
class InFlight:
    session: Session
    message: Message
    env: messages.Envelope
    future: Future[messages.TaskResult]
    leased_at: float = field(default_factory=time.monotonic)


def _prepare_maths(audio: bool) -> None:
    """One maths thread per task: a worker runs ``concurrency`` tasks at once, and BLAS
    pools of one thread per core in each made two workers on two cores no faster than one
    (bench.audio). Then compile librosa's numba code now, not inside the first track."""
    threadpoolctl.threadpool_limits(limits=1)
    if audio:
        from libs.common.audio.features import warm_up

        started = time.monotonic()
        warm_up()
        log.info(
            "audio analysis ready in %.1fs", time.monotonic() - started,
            extra={"action": "warm_up"},
        )  # fmt: skip


def _audio_config(settings: Settings, worker_id: str, *, local_files: bool) -> AudioConfig:
    from libs.common.audio.decode import find_ffmpeg

    return AudioConfig(
        ffmpeg=find_ffmpeg(settings.ffmpeg_binary),
        scratch=scratch.base(settings.work_dir) / f"{os.getpid()}-{worker_id}",
        search_prefix=settings.audio_search_prefix,
        max_duration=settings.audio_max_duration,
        max_bytes=settings.audio_max_bytes,
        analysis_seconds=settings.audio_analysis_seconds,
        local_files=local_files,
    )


@dataclass
class Options:
    name: str | None = None
    drain: bool = False
    max_idle: float | None = None
    #: Working for a hosted Conveyor (``--server``): never read this machine's own files.
    lent: bool = False
    #: The pairing (worker token) this process runs under, sent in its heartbeats.
    paired_id: str = ""
    #: CSV tasks through presigned URLs from the server, not ``storage`` (paired workers).
    task_urls: TaskUrls | None = None
    #: Tasks through the web's gateway (a WebSocket), not from the broker (paired workers).
    gateway: GatewayTarget | None = None


class Worker:
    def __init__(
        self, settings: Settings, storage: Storage, broker: Broker, options: Options | None = None
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.broker = broker
        self.options = options or Options()
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.name = self.options.name or self.id
        self.policy = RetryPolicy(
            settings.max_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )
        self.executor = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="task")
        self.in_flight: list[InFlight] = []
        self.stopping = threading.Event()
        self.processed = self.failed = 0
        self.audio = _audio_config(settings, self.id, local_files=not self.options.lent)
        self.beats = Heartbeats(
            self.id, self.name, settings, broker, ffmpeg=self.audio.ffmpeg is not None,
            paired_id=self.options.paired_id,
        )  # fmt: skip
        self.orders = Orders(self.id, self.options.paired_id, on_revoked=self._revoked)
        self.revoked = self.orders.revoked
        self._progress: deque[messages.TrackProgress] = deque(maxlen=10_000)
        self._idle_since = time.monotonic()
        self._deadline: float | None = None
        self.loop: ConsumeLoop | GatewayLoop = ConsumeLoop(
            broker, f"worker {self.name}", self._queues, self._on_message,
            prefetch=settings.concurrency, tick=self._tick, on_connect=self._on_connect,
            wait_seconds=self._wait_seconds,
        )  # fmt: skip
        if self.options.gateway is not None:
            self.loop = GatewayLoop(
                self.options.gateway.url, self.options.gateway.token,
                lambda: hello_from(self, settings.concurrency), self._on_message,
                self.orders.on_message, self._revoked_at_gateway, tick=self._tick,
                on_connect=self._on_connect, wait_seconds=self._wait_seconds,
                name=f"worker {self.name}",
            )  # fmt: skip
        # A broadcast sent while this connection is down is lost (the queue dies with it),
        # so it reconnects fast after an outage; the dispatcher repeats a revocation at
        # each heartbeat until one arrives.
        self.control = ConsumeLoop(
            broker, f"worker {self.name} control", lambda: [self.control_queue],
            self.orders.on_message, prefetch=10, stop=self.loop.stop,
            max_backoff=CONTROL_MAX_BACKOFF,
        )  # fmt: skip

    @property
    def endpoint(self) -> str:
        """Where the tasks come from, for people: the gateway's address or the broker's."""
        if isinstance(self.loop, GatewayLoop):
            return f"gateway {self.loop.url.split('/api/')[0]}"
        return broker_host(self.settings.broker_url)

    @property
    def declares(self) -> bool:
        """Whether this worker declares the topology. A paired worker never does: the
        server owns it, and its broker user may have no right to (infra/rabbitmq.py)."""
        return self.settings.worker_declares and not self.options.lent

    @property
    def task_queue(self) -> Queue:
        return topology.task_queue(
            self.broker.prefix, self.settings.pool, self.broker.delivery_limit,
            declare=self.declares,
        )  # fmt: skip

    @property
    def control_queue(self) -> Queue:
        """On RabbitMQ the broker names it, so no right to name queues is needed."""
        server_named = self.broker.kind == "amqp"
        return topology.control_queue(self.broker.prefix, self.id, server_named=server_named)

    def _queues(self) -> list[Queue]:
        return [self.task_queue]

    def run(self) -> None:
        """Consume until stopped; returns after the shutdown sequence."""
        log.info(
            "worker %s taking tasks from pool %r; ffmpeg: %s", self.name, self.settings.pool,
            self.audio.ffmpeg or "none (music tasks will be retried elsewhere)",
            extra={"action": "worker_start"},
        )  # fmt: skip
        scratch.sweep(self.audio.scratch.parent)
        _prepare_maths(self.audio.ffmpeg is not None)
        control = threading.Thread(target=self._run_control, name="worker-control", daemon=True)
        if self.broker.broadcasts and self.options.gateway is None:  # else on the socket
            control.start()
        try:
            self.loop.run()
        finally:
            self.loop.stop.set()  # the control loop too
            shutil.rmtree(self.audio.scratch, ignore_errors=True)
            unfinished = [f for f in self.in_flight if not f.future.done()]
            self.executor.shutdown(wait=False, cancel_futures=True)
            if control.is_alive():
                control.join(CONTROL_JOIN_SECONDS)  # it finishes its current receive
            self.broker.delete_private_queue(self.control_queue)
            if unfinished:
                log.warning(
                    "handed back %d unfinished tasks to the broker", len(unfinished),
                    extra={"action": "handed_back"},
                )  # fmt: skip
            log.info(
                "worker stopped: %d done, %d failed", self.processed, self.failed,
                extra={"action": "worker_stop"},
            )  # fmt: skip

    @property
    def unfinished(self) -> int:
        return sum(1 for f in self.in_flight if not f.future.done())

    def request_stop(self) -> None:
        """Stop: finish what is in flight (``_shutdown_step``). While disconnected there is
        nothing to finish: the broker or the gateway gave this worker's tasks back when the
        connection dropped, so stop reconnecting and exit."""
        self.stopping.set()
        if not self.loop.connected.is_set():
            self.loop.stop.set()

    def _run_control(self) -> None:
        try:
            self.control.run()
        except Exception:
            log.exception(
                "the control loop died: stopping rather than missing cancellations",
                extra={"action": "died"},
            )  # fmt: skip
            self.request_stop()

    def _revoked(self) -> None:
        """The control loop's thread: revoked in the app; stop now (see _shutdown_step)."""
        log.warning(
            "this worker was revoked in the app: it stops taking work and hands back "
            "%d unfinished tasks", self.unfinished, extra={"action": "revoked"},
        )  # fmt: skip
        self.request_stop()

    def _revoked_at_gateway(self) -> None:
        """The gateway closed the socket as revoked (or refused the token): stop now."""
        self.revoked.set()
        self._revoked()

    # -- loop callbacks (the loop's own thread) -------------------------------------------
    def _on_connect(self, session: Session) -> None:
        if self.declares:
            self.broker.declare(session.conn, pools=(self.settings.pool,))
        # Tasks taken on a lost connection will be redelivered; don't ack them here.
        self.in_flight = [f for f in self.in_flight if not f.future.done()]

    def _on_message(self, session: Session, message: Message) -> None:
        self._idle_since = time.monotonic()
        try:
            env = messages.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            session.publisher.dead_letter(message, f"undecodable message: {exc}")
            return
        body = env.body
        if self.orders.is_cancelled(env.job_id):
            message.ack()  # the dispatcher already marked the job's queued tasks cancelled
        elif isinstance(body, messages.CsvTask):
            urls = self.options.task_urls
            storage = urls.for_task(body.task_id) if urls is not None else self.storage
            future = self.executor.submit(
                handle_csv, body, storage, worker=self.name,
                max_errors=self.settings.max_row_errors_per_task,
            )  # fmt: skip
            self.in_flight.append(InFlight(session, message, env, future))
        elif isinstance(body, messages.TrackTask):
            future = self.executor.submit(
                handle_tracks, body, self.audio, worker=self.name, progress=self._report,
                urls=self.options.task_urls,
            )  # fmt: skip
            self.in_flight.append(InFlight(session, message, env, future))
        elif isinstance(body, messages.CanaryTask):
            future = self.executor.submit(handle_canary, body, worker=self.name)
            self.in_flight.append(InFlight(session, message, env, future))
        else:
            session.publisher.dead_letter(message, f"no handler for {type(body).__name__}")

    def _wait_seconds(self) -> float:
        """Don't block on the socket while tasks run: ``_tick`` waits on them instead."""
        return 0.0 if self.in_flight else 0.5

    def _tick(self, session: Session) -> None:
        if self.in_flight:
            full = len(self.in_flight) >= self.settings.concurrency
            wait([f.future for f in self.in_flight], 0.25 if full else 0.02, FIRST_COMPLETED)
        for item in [f for f in self.in_flight if f.future.done()]:
            self.in_flight.remove(item)
            self._settle(session, item)
            self._idle_since = time.monotonic()
        self._keep_leases(session)
        self._send_progress(session)
        self.beats.tick(session.publisher, self._snapshot)
        if self.stopping.is_set():
            self._shutdown_step(session)
        elif self.in_flight:
            self._idle_since = time.monotonic()
        elif self._idle_done(session):
            log.info("queue drained / idle; stopping", extra={"action": "idle_stop"})
            self.stopping.set()

    # -- helpers ---------------------------------------------------------------------------
    def _report(self, task_id: str, track_id: int, stage: str) -> None:
        """A handler thread's progress: queued here, sent by the loop's thread."""
        self._progress.append(messages.TrackProgress(task_id, track_id, stage))

    def _send_progress(self, session: Session) -> None:
        while self._progress:
            progress = self._progress.popleft()
            job_id = progress.task_id.rsplit("-", 1)[0]
            session.publisher.event(messages.envelope(job_id, progress))

    def _keep_leases(self, session: Session) -> None:
        """Extend the lease of each running task every ``lease_interval`` (a third of it)."""
        interval = self.broker.lease_interval
        if interval is None or self.options.gateway is not None:  # the gateway keeps them
            return
        now = time.monotonic()
        for item in self.in_flight:
            if item.session is session and now - item.leased_at >= interval:
                self.broker.extend_lease(item.message)
                item.leased_at = now

    def _settle(self, session: Session, item: InFlight) -> None:
        env = item.env
        extra = {"job_id": env.job_id, "task_id": getattr(env.body, "task_id", None),
                 "attempt": env.attempt}  # fmt: skip
        current = item.session is session
        if not current and self.options.gateway is not None:
            # The gateway gave this task back when its socket closed; a result now could
            # settle its new delivery (to this worker) while that run goes on. It runs again.
            log.debug("task of a closed socket dropped", extra={**extra, "action": "dropped"})
            return
        try:
            result = item.future.result()
        except Exception as exc:
            if not current:
                return
            decision = decide(env.attempt, exc, self.policy)
            log.warning("task failed: %s", describe(exc), extra={**extra, "action": "task_error"})
            if isinstance(decision, DeadLetter):
                self.failed += 1
                session.publisher.dead_letter(item.message, decision.cause)
            else:
                session.publisher.retry(item.message, env, decision.delay)
            return
        session.publisher.event(messages.envelope(env.job_id, result))
        if current:
            item.message.ack()
        self.processed += 1
        self.beats.count(result.rows_in)
        log.debug("task done", extra={**extra, "action": "task_done"})

    def _snapshot(self) -> Snapshot:
        state = messages.W_STOPPING if self.stopping.is_set() else messages.W_ONLINE
        job = self.in_flight[0].env.job_id if self.in_flight else None
        return Snapshot(state, len(self.in_flight), self.processed, self.failed, job)

    def _shutdown_step(self, session: Session) -> None:
        if self._deadline is None:
            self.loop.cancel_consumer()
            # Revoked: no grace. Unfinished tasks go back to the broker for other workers.
            grace = 0.0 if self.revoked.is_set() else self.settings.shutdown_grace_seconds
            self._deadline = time.monotonic() + grace
            log.info(
                "stopping: finishing %d tasks in flight", self.unfinished,
                extra={"action": "stopping"},
            )  # fmt: skip
        if not self.in_flight or time.monotonic() >= self._deadline:
            self.beats.final(session.publisher, self.processed, self.failed)
            self.loop.stop.set()

    def _idle_done(self, session: Session) -> bool:
        idle = time.monotonic() - self._idle_since
        if self.options.max_idle is not None and idle >= self.options.max_idle:
            return True
        if self.options.drain and idle >= 1.0:
            return self.broker.queue_depth(session.conn, self.task_queue.name) == 0
        return False
