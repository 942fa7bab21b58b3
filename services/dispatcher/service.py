"""The dispatcher: fans jobs out, records results and dead letters, finishes jobs.

Three consume loops, each with its own connection and thread, so a long fan-out never
delays results: ``jobs`` (fan-out), ``events`` (task results, track progress and worker
heartbeats) and ``dead`` (the dead-letter queue, whose every message is attributed to its
task and job).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import msgspec
from kombu import Queue
from kombu.message import Message
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from libs.common import csvfile, jobs, messages, topology
from libs.common.broker import Broker, dead_cause
from libs.common.consuming import ConsumeLoop
from libs.common.consuming import Session as BrokerSession
from libs.common.models import JOB_FINAL, T_QUEUED, Job, Task
from libs.common.retry import DeadLetter, RetryPolicy, TransientError, decide, describe
from libs.common.settings import Settings
from libs.common.storage import Storage
from services.dispatcher import fanout, registry, results, tracklist

log = logging.getLogger(__name__)

#: Database outages are waited out through the retry queues for about an hour.
EVENT_POLICY = RetryPolicy(max_attempts=20, base_seconds=1.0, max_seconds=300.0)


class Dispatcher:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], storage: Storage, broker: Broker
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.broker = broker
        self.stop = threading.Event()
        self.policy = RetryPolicy(
            settings.max_attempts, settings.retry_base_seconds, settings.retry_max_seconds
        )
        self.config = fanout.FanoutConfig(settings.chunk_rows, settings.chunk_max_bytes)
        prefix, limit = broker.prefix, broker.delivery_limit
        self.loops = [
            self._loop("jobs", topology.job_queue(prefix, limit), self._on_job, 1),
            self._loop("events", topology.event_queue(prefix, limit), self._on_event, 20),
            self._loop("dead", topology.dead_queue(prefix), self._on_dead, 20),
        ]
        for loop in self.loops:  # any of them may be first to connect: each declares
            loop.on_connect = self._declare
        self.loops[0].on_connect = self._on_connect
        self._threads: list[threading.Thread] = []
        self.died = False

    def _loop(
        self, name: str, queue: Queue, handler: Callable[[BrokerSession, Message], None],
        prefetch: int,
    ) -> ConsumeLoop:  # fmt: skip
        return ConsumeLoop(
            self.broker, f"dispatcher.{name}", lambda: [queue], handler,
            prefetch=prefetch, stop=self.stop,
        )  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for loop in self.loops:
            thread = threading.Thread(target=self._supervise, args=(loop,), name=loop.name)
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def _supervise(self, loop: ConsumeLoop) -> None:
        try:
            loop.run()
        except Exception:
            log.exception("%s died; stopping the dispatcher", loop.name, extra={"action": "died"})
            self.died = True
            self.stop.set()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _declare(self, session: BrokerSession) -> None:
        self.broker.declare(session.conn)

    def _on_connect(self, session: BrokerSession) -> None:
        self._declare(session)
        if not self.broker.durable:
            reconcile(self.sessions, session)

    # -- handlers --------------------------------------------------------------------------
    def _on_job(self, session: BrokerSession, message: Message) -> None:
        env = _decode(session, message)
        if env is None:
            return
        if not isinstance(env.body, messages.JobRequested):
            session.publisher.dead_letter(message, f"unexpected {type(env.body).__name__} in jobs")
            return
        try:
            with session.publisher.holding(message):  # a long fan-out keeps its SQS lease
                complete = self._fan_out(session, env.job_id, env.body.kind)
        except tracklist.PlanError as exc:
            self._fail(env.job_id, str(exc))
        except csvfile.CsvContentError as exc:
            self._fail(env.job_id, f"the CSV cannot be split: {exc}")
        except FileNotFoundError:
            self._fail(env.job_id, "the uploaded file is missing from storage")
        except (OSError, OperationalError, TransientError) as exc:
            self._retry_or_dead(session, message, env, exc, self.policy)
            return
        else:
            if complete:
                results.finish_if_complete(self.sessions, self.storage, env.job_id)
        message.ack()

    def _fan_out(self, session: BrokerSession, job_id: str, kind: str) -> bool:
        if kind in jobs.TRACK_KINDS:
            return fanout.fan_out_tracks(self.sessions, session.publisher, self.settings, job_id)
        return fanout.fan_out(self.sessions, self.storage, session.publisher, self.config, job_id)

    def _on_event(self, session: BrokerSession, message: Message) -> None:
        env = _decode(session, message)
        if env is None:
            return
        body = env.body
        try:
            if isinstance(body, messages.Heartbeat):
                self._record_heartbeat(session, env, body)
                message.ack()
                return
            if isinstance(body, messages.TrackProgress):
                self._in_tx(lambda s: results.record_progress(s, body))
                message.ack()
                return
            if isinstance(body, messages.TaskResult):
                self._in_tx(lambda s: results.record_result(s, env.job_id, body))
            else:
                session.publisher.dead_letter(message, f"unexpected {type(body).__name__} event")
                return
            results.finish_if_complete(self.sessions, self.storage, env.job_id)
        except (OSError, OperationalError) as exc:
            self._retry_or_dead(session, message, env, exc, EVENT_POLICY)
            return
        message.ack()

    def _on_dead(self, session: BrokerSession, message: Message) -> None:
        cause = dead_cause(message)
        try:
            env = messages.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "dead letter that is not a Conveyor message (%s): %r; cause: %s",
                exc, message.body[:200], cause, extra={"action": "dead_unknown"},
            )  # fmt: skip
            message.ack()
            return
        body = env.body
        log.warning("dead letter: %s", cause, extra={"job_id": env.job_id, "action": "dead_letter"})
        if isinstance(body, messages.TaskBody | messages.TaskResult):
            self._in_tx(lambda s: results.record_dead(s, env.job_id, body.task_id, cause))
            results.finish_if_complete(self.sessions, self.storage, env.job_id)
        elif isinstance(body, messages.JobRequested):
            self._fail(env.job_id, f"the job could not be fanned out: {cause}")
        message.ack()

    # -- helpers ---------------------------------------------------------------------------
    def _record_heartbeat(
        self, session: BrokerSession, env: messages.Envelope, beat: messages.Heartbeat
    ) -> None:
        """A heartbeat is not retried: the worker sends a newer one within seconds. A
        revoked worker that is still beating is told again to stop (it may have been
        disconnected when the revocation was broadcast)."""
        revoked = [False]

        def record(s: Session) -> None:
            revoked[0] = registry.record(s, beat, env.sent_at)

        try:
            self._in_tx(record)
        except (OSError, OperationalError) as exc:
            log.warning(
                "heartbeat of worker %s not recorded: %s", beat.name, describe(exc),
                extra={"action": "heartbeat_lost"},
            )  # fmt: skip
            return
        if revoked[0]:
            log.info(
                "revoked worker %s is still running: telling it to stop", beat.name,
                extra={"action": "worker_revoked"},
            )  # fmt: skip
            stop = messages.WorkerRevoked(worker_id=beat.worker_id, paired_id=beat.paired_id)
            session.publisher.control(messages.envelope("", stop))

    def _in_tx(self, fn: Callable[[Session], object]) -> None:
        with self.sessions() as s, s.begin():
            fn(s)

    def _fail(self, job_id: str, error: str) -> None:
        log.error("job failed: %s", error, extra={"job_id": job_id, "action": "job_failed"})
        self._in_tx(lambda s: results.fail_job(s, job_id, error))

    def _retry_or_dead(
        self,
        session: BrokerSession,
        message: Message,
        env: messages.Envelope,
        exc: BaseException,
        policy: RetryPolicy,
    ) -> None:
        decision = decide(env.attempt, exc, policy)
        log.warning(
            "attempt %d failed: %s", env.attempt, describe(exc),
            extra={"job_id": env.job_id, "attempt": env.attempt, "action": "retry"},
        )  # fmt: skip
        if isinstance(decision, DeadLetter):
            session.publisher.dead_letter(message, decision.cause)
        else:
            session.publisher.retry(message, env, decision.delay)


def _decode(session: BrokerSession, message: Message) -> messages.Envelope | None:
    try:
        return messages.decode(message.body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        session.publisher.dead_letter(message, f"undecodable message: {exc}")
        return None


def reconcile(sessions: sessionmaker[Session], session: BrokerSession) -> None:
    """Re-publish the unfinished work of every open job (for brokers that forget on restart)."""
    with sessions() as db:
        open_jobs = db.scalars(select(Job).where(Job.state.not_in(JOB_FINAL))).all()
        for job in open_jobs:
            if not job.fanout_done:
                session.publisher.job(messages.envelope(job.id, messages.JobRequested(job.kind)))
            queued = db.scalars(select(Task).where(Task.job_id == job.id, Task.state == T_QUEUED))
            for task in queued:
                session.publisher.task(jobs.task_envelope(job, task), job.pool)
    if open_jobs:
        log.info(
            "re-published the open work of %d jobs", len(open_jobs), extra={"action": "reconcile"}
        )
