"""The canary handler: hold the worker for the task's seconds, then report one item done.

Operators run canary jobs to smoke-test a deployment end to end, and to check lease
settings (a task longer than SQS_VISIBILITY_TIMEOUT must still run exactly once).
"""

from __future__ import annotations

import logging
import time

from libs.common import messages

log = logging.getLogger(__name__)


def handle_canary(task: messages.CanaryTask, *, worker: str) -> messages.TaskResult:
    started = time.monotonic()
    log.info(
        "canary task holding this worker for %.1fs", task.seconds,
        extra={"task_id": task.task_id, "action": "canary_start"},
    )  # fmt: skip
    time.sleep(task.seconds)  # the point of the task: occupy a worker, as real work would
    return messages.TaskResult(
        task_id=task.task_id, seq=task.seq, rows_in=1, rows_out=1, rows_failed=0,
        worker=worker, elapsed=time.monotonic() - started,
    )  # fmt: skip
