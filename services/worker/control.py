"""What reaches a worker on its control queue: job cancellations and its own revocation.

The control loop (a second connection, ``worker.py``) hands each message to
``Orders.on_message`` on its own thread; the task loop asks ``is_cancelled`` before it
starts a task and watches ``revoked``. A revocation names a registry id or a pairing:
every process paired under a revoked pairing obeys it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

import msgspec
from kombu.message import Message

from libs.common import messages
from libs.common.consuming import Session

log = logging.getLogger(__name__)

#: Cancelled jobs remembered (the oldest are forgotten first).
MAX_REMEMBERED_CANCELS = 10_000


class Orders:
    def __init__(self, worker_id: str, paired_id: str, on_revoked: Callable[[], None]) -> None:
        self.worker_id, self.paired_id = worker_id, paired_id
        #: Set when the app revoked this worker: it stops at once and hands work back.
        self.revoked = threading.Event()
        self._on_revoked = on_revoked
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def on_message(self, session: Session, message: Message) -> None:
        """The control loop's own thread: remember a cancelled job, or obey a revocation."""
        try:
            env = messages.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("undecodable control message: %s", exc, extra={"action": "control"})
        else:
            body = env.body
            if isinstance(body, messages.JobCancelled):
                self._remember_cancel(env.job_id)
            elif isinstance(body, messages.WorkerRevoked) and self._first_for_me(body):
                self._on_revoked()
        message.ack()

    def _first_for_me(self, revoked: messages.WorkerRevoked) -> bool:
        """Whether ``revoked`` names this worker and it was not revoked before (the
        dispatcher repeats a revocation at each heartbeat until the worker stops)."""
        if not self.is_me(revoked) or self.revoked.is_set():
            return False
        self.revoked.set()
        return True

    def is_me(self, revoked: messages.WorkerRevoked) -> bool:
        if revoked.worker_id == self.worker_id:
            return True
        return bool(self.paired_id) and self.paired_id in (revoked.worker_id, revoked.paired_id)

    def is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def _remember_cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled[job_id] = None
            while len(self._cancelled) > MAX_REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)
