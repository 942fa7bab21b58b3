"""Pairing a worker with a hosted Conveyor: the saved config, the HTTP client and the flow.

The client talks to a real HTTP server on 127.0.0.1 (``PairingStub``, below) that answers
as the contract says: ``POST /api/workers/pair`` and ``/api/workers/refresh``.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from libs.common.settings import Settings
from services.worker import config, remote
from services.worker.pairing_client import (
    CodeError,
    Connection,
    PairingError,
    check_server,
    mask,
    normalise_code,
    pair,
    refresh,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cvw_s3cr3tT0kenValue0123456789abcdef"
CODE = "K7QM-2XPD"
ANSWER: dict[str, Any] = {
    "worker_id": "w-42",
    "name": "laptop",
    "pool": "pair-abc",
    "broker_url": "amqps://lender:pa55word@rabbit.example:5671/conveyor",
    "queue_prefix": "conveyor",
    "storage_url": "s3://bucket/conveyor",
    "heartbeat_seconds": 7.5,
}


# --------------------------------------------------------------------------- the stub


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict: JSON; bytes: as is
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class PairingStub:
    """The server's pairing endpoints on 127.0.0.1; ``replies[path]`` says what to answer."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.release = threading.Event()  # a ``stall`` reply waits for it
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                stub.seen.append(Seen(self.path, dict(self.headers.items()), body))
                queue = stub.replies.get(self.path) or [Reply(404, {"detail": "Not Found"})]
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
                if reply.body == "stall":
                    stub.release.wait(30)
                    return
                raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                data = raw if isinstance(raw, bytes) else raw.encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def answer(self, path: str, *replies: Reply) -> None:
        self.replies[f"/api/workers/{path}"] = list(replies)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def stub() -> Iterator[PairingStub]:
    server = PairingStub()
    try:
        yield server
    finally:
        server.close()


def paired(**changes: Any) -> dict[str, Any]:
    return {**ANSWER, "token": TOKEN, **changes}


# --------------------------------------------------------------------------- saved config


def test_config_is_written_owner_only_and_read_back(tmp_path: Path) -> None:
    file = tmp_path / "nested" / "conveyor" / config.FILE_NAME
    saved = config.SavedWorker("https://app.example", "w-42", TOKEN, "laptop")
    old_umask = os.umask(0)  # even a permissive umask must not widen the file
    try:
        config.save(file, saved)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert config.load(file) == saved
    assert [p.name for p in file.parent.iterdir()] == [config.FILE_NAME]  # no temp file left
    assert json.loads(file.read_text())["token"] == TOKEN

    replaced = config.SavedWorker("https://other.example", "w-7", "cvw_other", "vps")
    config.save(file, replaced)
    assert config.load(file) == replaced
    assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_forget_deletes_once(tmp_path: Path) -> None:
    file = tmp_path / config.FILE_NAME
    config.save(file, config.SavedWorker("https://app.example", "w", TOKEN, "n"))
    assert config.forget(file) is True
    assert not file.exists()
    assert config.forget(file) is False
    assert config.load(file) is None


def test_unreadable_config_says_how_to_fix_it(tmp_path: Path) -> None:
    file = tmp_path / config.FILE_NAME
    file.write_text('{"server": "https://app.example"}')
    with pytest.raises(config.ConfigError, match="--forget"):
        config.load(file)


def test_config_dir_override(tmp_path: Path) -> None:
    assert config.path({config.ENV_DIR: str(tmp_path)}) == tmp_path / config.FILE_NAME
    assert config.path({}).name == config.FILE_NAME
    assert config.path({}).parent != tmp_path


# --------------------------------------------------------------------------- codes, secrets


@pytest.mark.parametrize(
    ("typed", "sent"),
    [("K7QM-2XPD", "K7QM2XPD"), (" k7qm 2xpd\n", "K7QM2XPD"), ("k7qm2xpd", "K7QM2XPD")],
)
def test_codes_are_normalised(typed: str, sent: str) -> None:
    assert normalise_code(typed) == sent


@pytest.mark.parametrize("typed", ["", "K7QM-2XP", "K7QM-2XPDD", "K7QM_2XPD", "K7QM-2XPÉ"])
def test_malformed_codes_are_refused_before_asking(typed: str) -> None:
    with pytest.raises(CodeError, match="8 letters or digits"):
        normalise_code(typed)


def test_masking_shows_six_characters_at_most() -> None:
    assert mask(TOKEN) == "cvw_s3…"
    assert mask("K7QM2XPD") == "K7…"
    assert mask("abc") == "…"


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("https://app.example/", "https://app.example"),
        ("https://app.example/conveyor/", "https://app.example/conveyor"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://localhost:8000/", "http://localhost:8000"),
        ("http://192.168.1.20:8000", "http://192.168.1.20:8000"),
        ("http://10.0.0.3", "http://10.0.0.3"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_servers_accepted(given: str, base: str) -> None:
    assert check_server(given) == base


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("http://app.example", "refusing plain http:// to app.example"),
        ("http://8.8.8.8:8000", "refusing plain http:// to 8.8.8.8"),
        ("ftp://app.example", "expected https://host"),
        ("app.example", "expected https://host"),
        ("https://user:pw@app.example", "address only"),
    ],
)
def test_servers_refused(given: str, reason: str) -> None:
    with pytest.raises(PairingError, match=reason):
        check_server(given)


# --------------------------------------------------------------------------- the client


def test_pair_sends_the_normalised_code_and_reads_the_answer(stub: PairingStub) -> None:
    stub.answer("pair", Reply(200, paired()))
    answer = pair(stub.url + "/", "k7qm-2xpd", "laptop", "laptop.local")
    assert answer == Connection(**paired())
    (seen,) = stub.seen
    assert seen.path == "/api/workers/pair"
    assert seen.body == {"code": "K7QM2XPD", "name": "laptop", "host": "laptop.local"}
    assert "authorization" not in {k.lower() for k in seen.headers}


def test_refresh_sends_the_token_as_bearer(stub: PairingStub) -> None:
    stub.answer("refresh", Reply(200, ANSWER))
    answer = refresh(stub.url, TOKEN, "laptop", "laptop.local")
    assert answer.token is None and answer.pool == "pair-abc"
    (seen,) = stub.seen
    assert seen.path == "/api/workers/refresh"
    assert {k.lower(): v for k, v in seen.headers.items()}["authorization"] == f"Bearer {TOKEN}"
    assert seen.body == {"name": "laptop", "host": "laptop.local"}


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(403, {"detail": "code not valid"}), "was not accepted (code not valid): check it"),
        (Reply(410, {"detail": "expired"}), "has expired (expired): get a new code"),
        (Reply(409, {"detail": "already used"}), "was already used (already used): get a new"),
        (
            Reply(429, {"detail": "slow down"}, {"Retry-After": "42"}),
            "too many pairing attempts (slow down): try again in 42 s",
        ),
        (Reply(429, {"detail": "x"}), "try again later"),
        (Reply(500, b"<h1>oops</h1>"), "answered HTTP 500 Internal Server Error"),
        (Reply(404, {"detail": "Not Found"}), "has no worker pairing here (is --server"),
        (Reply(302, b"", {"Location": "https://new.example/"}), "redirects to https://new"),
        (Reply(200, b"<html>a login page</html>"), "did not answer with JSON"),
        (Reply(200, {"worker_id": "w"}), "sent an unexpected answer: Object missing"),
        (Reply(200, {**ANSWER, "token": None}), "sent no token"),
    ],
)
def test_pair_failures_are_one_line(stub: PairingStub, reply: Reply, message: str) -> None:
    stub.answer("pair", reply)
    with pytest.raises(PairingError) as caught:
        pair(stub.url, CODE, "laptop", "h")
    text = str(caught.value)
    assert message in text
    assert "\n" not in text and "K7QM" not in text


def test_server_details_never_echo_the_code(stub: PairingStub) -> None:
    stub.answer("pair", Reply(403, {"detail": "K7QM2XPD is not a code we issued"}))
    with pytest.raises(PairingError, match="K7… is not a code we issued") as caught:
        pair(stub.url, CODE, "laptop", "h")
    assert caught.value.status == 403 and not caught.value.revoked


def test_refresh_with_a_revoked_token(stub: PairingStub) -> None:
    stub.answer("refresh", Reply(401, {"detail": f"token {TOKEN} revoked"}))
    with pytest.raises(PairingError, match="revoked") as caught:
        refresh(stub.url, TOKEN, "laptop", "h")
    assert caught.value.revoked
    assert TOKEN not in str(caught.value) and "cvw_s3…" in str(caught.value)


def test_connection_refused() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(PairingError, match=f"cannot reach 127.0.0.1:{port}: .*refused"):
            pair(f"http://127.0.0.1:{port}", CODE, "laptop", "h")


def test_tls_failure(stub: PairingStub) -> None:
    secure = stub.url.replace("http://", "https://")  # TLS to a plain-HTTP server
    with pytest.raises(PairingError, match=r"no secure connection to 127\.0\.0\.1"):
        pair(secure, CODE, "laptop", "h")


def test_a_server_that_never_answers(stub: PairingStub) -> None:
    stub.answer("pair", Reply(200, "stall"))
    with pytest.raises(PairingError, match=r"did not answer within 0.3 s"):
        pair(stub.url, CODE, "laptop", "h", timeout=0.3)


# --------------------------------------------------------------------------- the flow


@dataclass
class Terminal:
    typed: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    asked: int = 0

    def ask(self, prompt: str) -> str:
        self.asked += 1
        if not self.typed:
            raise EOFError
        return self.typed.pop(0)


def pairing(stub: PairingStub, tmp_path: Path, term: Terminal, **kw: Any) -> remote.Pairing:
    return remote.Pairing(
        server=stub.url, host="laptop.local", file=tmp_path / config.FILE_NAME,
        ask=term.ask, say=term.said.append, **kw,
    )  # fmt: skip


def test_pairing_saves_the_token_and_never_says_it(stub: PairingStub, tmp_path: Path) -> None:
    stub.answer("pair", Reply(200, paired()))
    term = Terminal()
    answer = pairing(stub, tmp_path, term, code=CODE).connect()
    assert answer.pool == "pair-abc"
    saved = config.load(tmp_path / config.FILE_NAME)
    assert saved == config.SavedWorker(stub.url, "w-42", TOKEN, "laptop")
    assert stub.seen[0].body["name"] == "laptop.local"  # no --name: the host's name
    said = " ".join(term.said)
    assert "paired with" in said and "cvw_s3…" in said
    assert TOKEN not in said and "K7QM" not in said


def test_a_saved_pairing_is_refreshed(stub: PairingStub, tmp_path: Path) -> None:
    file = tmp_path / config.FILE_NAME
    config.save(file, config.SavedWorker(stub.url, "w-42", TOKEN, "laptop"))
    stub.answer("refresh", Reply(200, ANSWER))
    answer = pairing(stub, tmp_path, Terminal()).connect()
    assert answer.broker_url == ANSWER["broker_url"]
    assert [s.path for s in stub.seen] == ["/api/workers/refresh"]
    assert stub.seen[0].body == {"name": "laptop", "host": "laptop.local"}


def test_revoked_without_a_terminal_deletes_and_exits(stub: PairingStub, tmp_path: Path) -> None:
    file = tmp_path / config.FILE_NAME
    config.save(file, config.SavedWorker(stub.url, "w-42", TOKEN, "laptop"))
    stub.answer("refresh", Reply(401, {"detail": "revoked"}))
    term = Terminal()
    with pytest.raises(PairingError, match=r"pair again .* --code CODE") as caught:
        pairing(stub, tmp_path, term).connect()
    assert not isinstance(caught.value, remote.UsageError)  # exit 1, not 2
    assert not file.exists()
    assert "deleted the saved token cvw_s3…" in term.said[0]
    assert term.asked == 0


def test_revoked_on_a_terminal_asks_for_a_new_code(stub: PairingStub, tmp_path: Path) -> None:
    file = tmp_path / config.FILE_NAME
    config.save(file, config.SavedWorker(stub.url, "w-42", TOKEN, "laptop"))
    stub.answer("refresh", Reply(401, {"detail": "revoked"}))
    stub.answer("pair", Reply(200, paired(token="cvw_newtoken0123456789")))
    term = Terminal(typed=["k7qm 2xpd"])
    pairing(stub, tmp_path, term, interactive=True).connect()
    assert [s.path for s in stub.seen] == ["/api/workers/refresh", "/api/workers/pair"]
    saved = config.load(file)
    assert saved is not None and saved.token == "cvw_newtoken0123456789"


def test_a_mistyped_code_is_asked_again(stub: PairingStub, tmp_path: Path) -> None:
    stub.answer("pair", Reply(403, {"detail": "code not valid"}), Reply(200, paired()))
    term = Terminal(typed=["nope", "K7QM-2XPX", "K7QM-2XPD"])
    pairing(stub, tmp_path, term, interactive=True).connect()
    assert term.asked == 3
    assert [s.body["code"] for s in stub.seen] == ["K7QM2XPX", "K7QM2XPD"]
    assert "8 letters or digits" in term.said[0] and "not accepted" in term.said[1]


def test_an_expired_code_is_not_asked_again(stub: PairingStub, tmp_path: Path) -> None:
    stub.answer("pair", Reply(410, {"detail": "expired"}))
    term = Terminal(typed=["K7QM-2XPD", "K7QM-2XPD"])
    with pytest.raises(PairingError, match="expired"):
        pairing(stub, tmp_path, term, interactive=True).connect()
    assert term.asked == 1


def test_no_terminal_and_no_code(stub: PairingStub, tmp_path: Path) -> None:
    with pytest.raises(remote.UsageError, match="--code CODE is needed"):
        pairing(stub, tmp_path, Terminal()).connect()
    assert stub.seen == []


def test_the_answer_becomes_the_settings() -> None:
    base = Settings(concurrency=3)
    settings = remote.apply(base, Connection(**ANSWER), {})
    assert settings.broker_url == ANSWER["broker_url"]
    assert (settings.pool, settings.queue_prefix) == ("pair-abc", "conveyor")
    assert settings.storage_url == "s3://bucket/conveyor"
    assert settings.concurrency == 3
    if hasattr(settings, "heartbeat_seconds"):
        assert settings.heartbeat_seconds == 7.5
    keep = remote.apply(base, Connection(**{**ANSWER, "storage_url": None}), {})
    assert keep.storage_url == base.storage_url


def test_an_unusable_broker_url_is_one_line_without_the_password() -> None:
    bad = Connection(**{**ANSWER, "broker_url": "redis://u:pa55word@cache:6379/0"})
    with pytest.raises(PairingError, match="BROKER_URL: unsupported scheme 'redis'") as caught:
        remote.apply(Settings(), bad, {})
    assert "pa55word" not in str(caught.value)


# --------------------------------------------------------------------------- the command


def run_worker(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"BROKER_URL", "WORKER_POOL"}}
    env[config.ENV_DIR] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "services.worker", *args],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.e2e
def test_command_with_a_refused_code(stub: PairingStub, tmp_path: Path) -> None:
    stub.answer("pair", Reply(403, {"detail": "code not valid"}))
    done = run_worker("--server", stub.url, "--code", "XXXX-XXXX", tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "the pairing code was not accepted (code not valid)" in done.stderr
    assert "Traceback" not in done.stderr
    assert stub.seen[0].body["code"] == "XXXXXXXX"
    assert not (tmp_path / config.FILE_NAME).exists()


@pytest.mark.e2e
def test_command_without_a_terminal_needs_a_code(stub: PairingStub, tmp_path: Path) -> None:
    done = run_worker("--server", stub.url, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--code CODE is needed when stdin is not a terminal" in done.stderr
    assert "Traceback" not in done.stderr
    assert stub.seen == []


@pytest.mark.e2e
def test_command_forget(tmp_path: Path) -> None:
    absent = run_worker("--forget", tmp_path=tmp_path)
    assert absent.returncode == 0 and "no saved pairing to forget" in absent.stdout
    file = tmp_path / config.FILE_NAME
    config.save(file, config.SavedWorker("https://app.example", "w", TOKEN, "laptop"))
    present = run_worker("--forget", tmp_path=tmp_path)
    assert present.returncode == 0
    assert "deleted the saved pairing with https://app.example" in present.stdout
    assert not file.exists()
