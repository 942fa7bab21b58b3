"""The worker's control orders (services/worker/control.py): cancellations remembered
(bounded), and a revocation obeyed once, whether it names the process or its pairing."""

from __future__ import annotations

from typing import Any

from libs.common import messages
from services.worker import control
from services.worker.control import Orders


class Message:
    """Stands in for a kombu message: a body, and whether it was acked."""

    def __init__(self, body: bytes) -> None:
        self.body, self.acked = body, False

    def ack(self) -> None:
        self.acked = True


def deliver(orders: Orders, body: messages.Body | bytes, job_id: str = "") -> Message:
    raw = body if isinstance(body, bytes) else messages.encode(messages.envelope(job_id, body))
    message = Message(raw)
    orders.on_message(None, message)  # type: ignore[arg-type]
    assert message.acked  # every control message is settled, even one it can't read
    return message


def orders() -> tuple[Orders, list[Any]]:
    calls: list[Any] = []
    return Orders("host-1-abc", "pair1", on_revoked=lambda: calls.append("stop")), calls


def test_cancellations_are_remembered_and_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(control, "MAX_REMEMBERED_CANCELS", 2)
    o, _ = orders()
    for job in ("j1", "j2", "j3"):
        deliver(o, messages.JobCancelled(), job)
    assert [o.is_cancelled(j) for j in ("j1", "j2", "j3", "j4")] == [False, True, True, False]


def test_a_revocation_for_someone_else_changes_nothing() -> None:
    o, calls = orders()
    deliver(o, messages.WorkerRevoked(worker_id="other", paired_id="pair2"))
    deliver(o, b"not json")
    assert not o.revoked.is_set() and calls == []


def test_a_revocation_by_process_or_pairing_is_obeyed_once() -> None:
    for revoked in (
        messages.WorkerRevoked(worker_id="host-1-abc"),
        messages.WorkerRevoked(worker_id="pair1"),
        messages.WorkerRevoked(worker_id="host-9-xyz", paired_id="pair1"),
    ):
        o, calls = orders()
        deliver(o, revoked)
        deliver(o, revoked)  # the dispatcher repeats it at each heartbeat
        assert o.revoked.is_set() and calls == ["stop"]


def test_an_operator_run_worker_has_no_pairing_to_match() -> None:
    o = Orders("host-1-abc", "", on_revoked=lambda: None)
    assert not o.is_me(messages.WorkerRevoked(worker_id="", paired_id=""))
    assert o.is_me(messages.WorkerRevoked(worker_id="host-1-abc"))
