"""`python -m services.web`: the HTTP API and UI on $PORT.

With no BROKER_URL it is the embedded all-in-one: the dispatcher and a worker run in
this process too, on an in-process broker, with SQLite and a local folder by default.
"""

from __future__ import annotations

import uvicorn

from libs.common import runtime
from services.web.app import create_app


def main(argv: list[str] | None = None) -> int:
    runtime.parser(
        "python -m services.web",
        "Conveyor's web service. Without BROKER_URL it also runs the dispatcher and a worker "
        "in-process (the embedded all-in-one).",
    ).parse_args(argv)
    settings = runtime.load_settings()
    components = runtime.build(settings)
    mode = "embedded all-in-one (web + dispatcher + worker)" if settings.embedded else "web only"
    print(f"conveyor web: {mode} on http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(
        create_app(components),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
