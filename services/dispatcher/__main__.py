"""`python -m services.dispatcher`: fan-out, results, dead letters, job completion."""

from __future__ import annotations

import signal

from libs.common import runtime
from services.dispatcher.service import Dispatcher


def main(argv: list[str] | None = None) -> int:
    runtime.parser(
        "python -m services.dispatcher",
        "Conveyor's dispatcher: fans jobs out into task batches and records their results.",
    ).parse_args(argv)
    settings = runtime.load_settings()
    if settings.embedded:
        runtime.fail(
            "BROKER_URL: not set. The dispatcher needs a shared broker (amqp:// or sqs://); "
            "without one, `python -m services.web` runs everything in one process."
        )
    c = runtime.build(settings)
    dispatcher = Dispatcher(settings, c.sessions, c.storage, c.broker)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: dispatcher.stop.set())
    dispatcher.start()
    while not dispatcher.stop.wait(1.0):
        pass
    dispatcher.join(10)
    return 1 if dispatcher.died else 0


if __name__ == "__main__":
    raise SystemExit(main())
