"""`python -m services.worker`: takes task batches from its pool's queue and runs them."""

from __future__ import annotations

import os
import signal

from libs.common import runtime
from libs.common.storage import Storage
from services.worker.worker import Options, Worker


def main(argv: list[str] | None = None) -> int:
    parser = runtime.parser(
        "python -m services.worker",
        "Conveyor's worker. SIGTERM or Ctrl-C: stop fetching, finish in-flight tasks within "
        "SHUTDOWN_GRACE_SECONDS, hand the rest back, exit 0. A second signal exits at once "
        "(the broker redelivers unacknowledged tasks).",
    )
    parser.add_argument("--pool", help="the pool to serve (overrides WORKER_POOL)")
    parser.add_argument(
        "--concurrency", type=int, help="tasks at once (overrides WORKER_CONCURRENCY)"
    )
    parser.add_argument("--name", help="a name shown in logs (default: host-pid-random)")
    parser.add_argument("--drain", action="store_true", help="exit 0 once the queue is empty")
    parser.add_argument(
        "--max-idle", type=float, metavar="SECONDS", help="exit after idling this long"
    )
    args = parser.parse_args(argv)
    settings = runtime.load_settings()
    if settings.embedded:
        runtime.fail(
            "BROKER_URL: not set. A separate worker needs a shared broker (amqp:// or sqs://); "
            "without one, `python -m services.web` runs a worker in-process."
        )
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    overrides = {k: v for k, v in (("pool", args.pool), ("concurrency", args.concurrency)) if v}
    settings = settings.replace(**overrides)
    runtime.check_ffmpeg(settings)
    options = Options(args.name, args.drain, args.max_idle)
    worker = Worker(settings, Storage(settings.storage_url), runtime.broker(settings), options)

    def on_signal(signum: int, _frame: object) -> None:
        if worker.stopping.is_set():
            os._exit(128 + signum)  # second signal: at once; unacked tasks are redelivered
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    if worker.unfinished:
        os._exit(0)  # running handlers cannot be interrupted; their tasks were handed back
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
