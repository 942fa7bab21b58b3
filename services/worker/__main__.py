"""`python -m services.worker`: takes task batches from its pool's queue and runs them.

Two ways to find the broker: ``BROKER_URL`` (and ``--pool``) from the environment, or
``--server URL`` to lend this machine to a hosted Conveyor: pair with the code the app
shows (once; the token is saved), and the server says which broker, pool and storage.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys

from libs.common import runtime
from libs.common.settings import Settings
from libs.common.storage import Storage
from services.worker import config, remote
from services.worker.display import Display
from services.worker.gateway_link import GatewayTarget, gateway_url
from services.worker.pairing_client import Connection, PairingError, check_server
from services.worker.task_urls import TaskUrls
from services.worker.worker import Options, Worker

DESCRIPTION = (
    "Conveyor's worker. With --server URL it lends this machine to a hosted Conveyor: it "
    "asks for the pairing code the app shows (or takes --code), saves the worker token it "
    "gets in exchange (delete it with --forget), and takes its pairing's tasks. Without "
    "--server it uses BROKER_URL and --pool. While it works, the terminal shows live "
    "progress (--plain: one line per change; --quiet: none). SIGTERM or Ctrl-C: stop "
    "fetching, finish in-flight tasks within SHUTDOWN_GRACE_SECONDS, hand the rest back, "
    "exit 0. A second signal exits at once (the broker redelivers unacknowledged tasks). "
    "A worker revoked in the app stops at once, hands its tasks back and exits 3."
)

#: The exit status of a worker revoked in the app (systemd: RestartPreventExitStatus=3).
EXIT_REVOKED = 3
#: A worker asks RabbitMQ for AMQP heartbeats this often (the services keep Broker's 30 s):
#: the broker gives a dead or cut-off worker's tasks back after about two missed ones.
#: Its loop thread never blocks on work (tasks run in threads), so a short one is safe.
AMQP_HEARTBEAT_SECONDS = 10


def _parser() -> argparse.ArgumentParser:
    parser = runtime.parser("python -m services.worker", DESCRIPTION)
    paired = parser.add_argument_group("lending this machine to a hosted Conveyor")
    paired.add_argument("--server", metavar="URL", help="the app's address, https://…")
    paired.add_argument("--code", help="the pairing code the app shows (else you are asked)")
    paired.add_argument(
        "--forget", action="store_true", help="delete the saved worker token, then exit"
    )
    parser.add_argument("--pool", help="the pool to serve (overrides WORKER_POOL)")
    parser.add_argument(
        "--concurrency", type=int, help="tasks at once (overrides WORKER_CONCURRENCY)"
    )
    parser.add_argument(
        "--name",
        help="a name shown in logs and in the app (default: host-pid-random; paired: "
        "the host's name)",
    )
    parser.add_argument("--drain", action="store_true", help="exit 0 once the queue is empty")
    parser.add_argument(
        "--max-idle", type=float, metavar="SECONDS", help="exit after idling this long"
    )
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--plain", action="store_true", help="progress as plain lines")
    shown.add_argument("--quiet", action="store_true", help="no progress display")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.forget:
        return _forget()
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.code is not None and args.server is None:
        parser.error("--code needs --server URL")
    if args.server is not None and args.pool:
        parser.error("--pool: a paired worker serves the pool its pairing names")
    if args.server is not None:
        try:
            args.server = check_server(args.server)
        except PairingError as exc:
            parser.error(str(exc))
    settings = runtime.load_settings()
    name, paired_id, task_urls, gateway = args.name, "", None, None
    if args.server is not None:
        settings, answer = _pair(args, settings)
        name, paired_id = answer.name, answer.worker_id
        if answer.task_urls and answer.token:
            task_urls = TaskUrls(args.server, answer.token)
        if answer.through_gateway and answer.token:
            gateway = GatewayTarget(gateway_url(args.server), answer.token)
            if args.drain:
                parser.error("--drain needs the broker; through the gateway use --max-idle")
    elif settings.embedded:
        runtime.fail(
            "BROKER_URL: not set. A separate worker needs a shared broker (amqp:// or sqs://), "
            f"or --server URL to work for a hosted Conveyor{_saved_hint()}; without either, "
            "`python -m services.web` runs a worker in-process."
        )
    overrides = {k: v for k, v in (("pool", args.pool), ("concurrency", args.concurrency)) if v}
    settings = settings.replace(**overrides)
    runtime.check_ffmpeg(settings)
    options = Options(
        name, args.drain, args.max_idle, lent=args.server is not None, paired_id=paired_id,
        task_urls=task_urls, gateway=gateway,
    )  # fmt: skip
    return _work(settings, options, args)


def _work(settings: Settings, options: Options, args: argparse.Namespace) -> int:
    """Run the worker, with its display, until it stops (on a signal, drained or idle)."""
    if options.gateway is not None:  # tasks come over the socket: no broker to reach
        settings = settings.replace(broker_url=None)
    broker = runtime.broker(settings, heartbeat=AMQP_HEARTBEAT_SECONDS)
    worker = Worker(settings, Storage(settings.storage_url), broker, options)
    display = Display.choose(worker, plain=args.plain, quiet=args.quiet)

    def on_signal(signum: int, _frame: object) -> None:
        if worker.stopping.is_set():
            if display is not None:
                display.abort()
            os._exit(128 + signum)  # second signal: at once; unacked tasks are redelivered
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if display is not None:
        display.start()
    try:
        worker.run()
    finally:
        if display is not None:
            display.stop()
    status = _revoked(worker) if worker.revoked.is_set() else 0
    if worker.unfinished:
        os._exit(status)  # running handlers cannot be interrupted; their tasks were handed back
    return status


def _revoked(worker: Worker) -> int:
    """Revoked in the app: say so; exit 3. The saved token stays: started again, the
    worker hears from the server that it was revoked, deletes it and says how to pair."""
    refused = getattr(worker.loop, "refused", None)
    if refused and "revoked" not in refused:  # the gateway no longer knows the token
        print(
            f"conveyor: the server refused this worker's token ({refused}): it stopped and "
            "handed its tasks back. Pair it again with a new code from the app.",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        return EXIT_REVOKED
    print(
        "conveyor: this worker was revoked in the app: it stopped and handed its tasks "
        "back. To lend this machine again, pair it with a new code from the app.",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return EXIT_REVOKED


def _pair(args: argparse.Namespace, settings: Settings) -> tuple[Settings, Connection]:
    """The settings and answer (name, paired id, token…) the server gives this worker;
    exit 1 (2: usage) if it won't."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    pairing = remote.Pairing(
        server=args.server,
        host=socket.gethostname(),
        file=config.path(os.environ),
        name=args.name,
        code=args.code,
        interactive=sys.stdin.isatty(),
    )
    try:
        answer = pairing.connect()
        return remote.apply(settings, answer, os.environ), answer
    except remote.UsageError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (PairingError, config.ConfigError) as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("\nconveyor: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _forget() -> int:
    file = config.path(os.environ)
    try:
        saved = config.load(file)
    except config.ConfigError:
        saved = None  # unreadable: delete it all the same
    try:
        existed = config.forget(file)
    except config.ConfigError as exc:
        runtime.fail(str(exc))
    if not existed:
        print(f"conveyor: no saved pairing to forget ({file} does not exist)")
        return 0
    where = f" with {saved.server}" if saved else ""
    print(
        f"conveyor: deleted the saved pairing{where} ({file}). The token stays valid on the "
        "server until the worker is revoked in the app."
    )
    return 0


def _saved_hint() -> str:
    with contextlib.suppress(config.ConfigError):
        saved = config.load(config.path(os.environ))
        if saved is not None:
            return f" (this machine was paired with --server {saved.server})"
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
