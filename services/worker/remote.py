"""``--server``: pair this worker with a hosted Conveyor, or reuse the saved pairing.

With a saved pairing for that server (and no ``--code``) the saved token is exchanged for
fresh settings; a revoked token is deleted, and an interactive terminal is asked for a
new code. Otherwise the code comes from ``--code`` or from a prompt (only when stdin is a
terminal), and the new token is saved. ``apply`` turns the server's answer into the
worker's settings, validated by the same parsers as the environment.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from libs.common import settings as settings_mod
from libs.common.settings import Settings
from services.worker import config
from services.worker.pairing_client import (
    CodeError,
    Connection,
    PairingError,
    check_server,
    mask,
    pair,
    refresh,
)

#: Codes a person may type at the prompt before giving up (the server limits attempts too).
PROMPT_ATTEMPTS = 3


class UsageError(PairingError):
    """The command line cannot work as given (exit 2)."""


def _say(line: str) -> None:
    print(f"conveyor: {line}", file=sys.stderr, flush=True)


@dataclass
class Pairing:
    """How to pair: where, as whom, and how to talk to the person at the terminal."""

    server: str
    host: str
    file: Path
    name: str | None = None
    code: str | None = None
    interactive: bool = False
    ask: Callable[[str], str] = input
    say: Callable[[str], None] = _say

    def connect(self) -> Connection:
        """Refresh the saved pairing or pair anew; PairingError with one line if neither."""
        server = check_server(self.server)
        saved = config.load(self.file)
        if saved is not None and saved.server == server and self.code is None:
            try:
                answer = refresh(server, saved.token, self.name or saved.name, self.host)
            except PairingError as exc:
                if not exc.revoked:
                    raise
                config.forget(self.file)
                self.say(f"{exc}; deleted the saved token {mask(saved.token)}")
                if not self.interactive:
                    raise PairingError(
                        f"pair again with a new code from the app: "
                        f"python -m services.worker --server {server} --code CODE"
                    ) from None
            else:
                self.say(f"connected to {server} as {answer.name} (pool {answer.pool})")
                if answer.name != saved.name:
                    config.save(self.file, _saved(server, answer, saved.token))
                return msgspec.structs.replace(answer, token=saved.token)
        elif saved is not None and saved.server != server:
            self.say(f"pairing with {server} will replace the saved pairing with {saved.server}")
        return self._pair(server)

    def _pair(self, server: str) -> Connection:
        attempt = 1
        while True:
            code = self.code if self.code is not None else self._ask_code(server)
            try:
                answer = pair(server, code, self.name or self.host, self.host)
                break
            except PairingError as exc:
                typo = isinstance(exc, CodeError) or exc.status == 403
                if self.code is not None or not typo or attempt >= PROMPT_ATTEMPTS:
                    raise
                self.say(str(exc))
                attempt += 1
        token = answer.token or ""
        config.save(self.file, _saved(server, answer, token))
        self.say(
            f"paired with {server} as {answer.name} (pool {answer.pool}); "
            f"token {mask(token)} saved in {self.file}"
        )
        return answer

    def _ask_code(self, server: str) -> str:
        if not self.interactive:
            raise UsageError(
                "--code CODE is needed when stdin is not a terminal: the pairing code is "
                f"shown in the app at {server}"
            )
        try:
            typed = self.ask(f"Pairing code shown at {server}: ")
        except EOFError:
            raise UsageError("no pairing code given") from None
        if not typed.strip():
            raise UsageError("no pairing code given")
        return typed


def _saved(server: str, answer: Connection, token: str) -> config.SavedWorker:
    return config.SavedWorker(server, answer.worker_id, token, answer.name)


def apply(base: Settings, answer: Connection, environ: Mapping[str, str]) -> Settings:
    """The worker's settings: the environment's, with the server's broker, pool and storage.

    The server's values go through the same parsers as the environment's, so a value this
    worker cannot use stops start-up with one line (a broker password is never shown).
    """
    overlay = {
        "WORKER_POOL": answer.pool,
        "QUEUE_PREFIX": answer.queue_prefix,
        "HEARTBEAT_SECONDS": repr(answer.heartbeat_seconds),
    }
    names = ["pool", "queue_prefix", "heartbeat_seconds"]
    if not answer.through_gateway:  # through the gateway this worker knows no broker
        overlay["BROKER_URL"] = answer.broker_url
        names.append("broker_url")
    if answer.storage_url:
        overlay["STORAGE_URL"] = answer.storage_url
    try:
        paired = settings_mod.load({**environ, **overlay})
    except settings_mod.SettingsError as exc:
        raise PairingError(f"the server sent a setting this worker cannot use: {exc}") from None
    if answer.storage_url:
        names.append("storage_url")  # else the environment's STORAGE_URL, as before
    return base.replace(**{n: getattr(paired, n) for n in names if hasattr(paired, n)})
