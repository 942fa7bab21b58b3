"""`python -m services.web`: the HTTP API and UI on $PORT.

With no BROKER_URL it is the embedded all-in-one: the dispatcher and a worker run in
this process too, on an in-process broker, with SQLite and a local folder by default.
`python -m services.web users ...` manages accounts instead (services/web/users_cli.py).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from libs.common import runtime
from libs.common import settings as settings_mod


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["users"]:
        from services.web import users_cli

        return users_cli.main(argv[1:])
    runtime.parser(
        "python -m services.web",
        "Conveyor's web service. Without BROKER_URL it also runs the dispatcher and a worker "
        "in-process (the embedded all-in-one).",
    ).parse_args(argv)
    from services.web.app import create_app  # here: `users ...` needs none of the app

    settings = runtime.load_settings()
    try:
        settings_mod.check_web(settings)
    except settings_mod.SettingsError as exc:  # exit 2, as for every invalid setting
        print(f"conveyor: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.embedded:
        runtime.check_ffmpeg(settings)
    components = runtime.build(settings)
    mode = "embedded all-in-one (web + dispatcher + worker)" if settings.embedded else "web only"
    print(f"conveyor web: {mode} on http://{settings.host}:{settings.port}", flush=True)
    config = uvicorn.Config(
        create_app(components),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        proxy_headers=False,  # the app believes X-Forwarded-For from TRUSTED_PROXIES only
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    server = _Server(config)
    server.run()
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """SIGTERM/SIGINT end a graceful shutdown and exit 0 (uvicorn would re-raise them).
    Gateway sockets are closed first with "going away" (1001), their tasks given back,
    before uvicorn closes the remaining connections."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = getattr(getattr(self.config.app, "state", None), "gateway", None)
        if hub is not None:
            await hub.going_away()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def on_signal(signum: int, _frame: object) -> None:
            self.force_exit = self.should_exit  # a second signal: stop waiting
            self.should_exit = True

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
