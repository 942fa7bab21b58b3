"""The newcomer's flow on the embedded default: `python -m services.web` with nothing set,
a pairing code from the app, and `python -m services.worker --server URL --code CODE` in
another process. The worker reaches only the web (its gateway, and the web-served task
input and output); it runs a CSV job and an audio job to completion, is listed with its
pool and host, and a revocation closes its socket and stops it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import audiogen
from tests.e2e.harness import ROOT, SPEC, Services, expected_output, make_csv, wait_for

pytestmark = pytest.mark.e2e

EXIT_REVOKED = 3


def audio_folder(root: Path) -> Path:
    music = root / "music"
    music.mkdir()
    audiogen.write(music / "a440.wav", audiogen.tone(440.0, 4.0))
    audiogen.write(music / "a440.mp3", audiogen.tone(440.0, 4.0))
    audiogen.write(music / "noise.wav", audiogen.noise(4.0, seed=1))
    audiogen.corrupt(music / "broken.mp3")
    return music


def start_worker(svc: Services, code: str, name: str) -> subprocess.Popen[bytes]:
    """A lent worker in its own process, with nothing but the server's address."""
    env = {k: v for k, v in svc.env.items() if k not in ("STORAGE_URL", "DATABASE_URL")}
    env.update(CONVEYOR_CONFIG_DIR=str(svc.tmp / f"{name}-config"), WORK_DIR=str(svc.tmp / name))
    log = (svc.tmp / f"{name}.log").open("wb")
    svc._logs.append(log)  # closed by stop_all
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.worker", "--server", svc.base, "--code", code,
         "--name", name, "--plain"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    svc.procs[name] = proc
    return proc


def gateway_worker(svc: Services, paired_id: str) -> dict[str, Any] | None:
    page = httpx.get(f"{svc.base}/api/workers", timeout=10).json()
    found = [w for w in page["items"] if w["paired_id"] == paired_id and w["status"] == "online"]
    return found[0] if found else None


def test_a_lent_worker_on_the_embedded_default(tmp_path: Path) -> None:
    svc = Services.configure_login_free(  # the newcomer's flow on loopback: no login
        tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/conveyor.db", HEARTBEAT_SECONDS="1",
        CHUNK_ROWS="2000", TRACKS_PER_TASK="2",
    )  # fmt: skip
    try:
        svc.start_web()
        pairing = httpx.post(f"{svc.base}/api/pairings", json={}, timeout=10).json()
        pool = pairing["pool"]
        worker = start_worker(svc, pairing["code"], "lent")
        saved = wait_for(
            lambda: (tmp_path / "lent-config" / "worker.json").exists(), 60, svc.logs()
        )
        assert saved
        token = json.loads((tmp_path / "lent-config" / "worker.json").read_text())["token"]
        paired_id = json.loads((tmp_path / "lent-config" / "worker.json").read_text())["worker_id"]
        listed = wait_for(lambda: gateway_worker(svc, paired_id), 60, f"listed\n{svc.logs()}")
        assert listed["pool"] == pool and listed["host"] and listed["name"] == "lent"

        # A CSV job in the pairing's pool: only the lent worker can run it.
        make_csv(tmp_path / "in.csv", 10_000, bad_every=500)
        with (tmp_path / "in.csv").open("rb") as f:
            response = httpx.post(
                f"{svc.base}/api/jobs/csv", files={"file": ("in.csv", f)},
                data={"pool": pool, "mapping": SPEC}, timeout=60,
            )  # fmt: skip
        assert response.status_code == 202, response.text
        job = svc.wait_state(response.json()["id"], {"completed", "failed"}, timeout=120)
        assert job["state"] == "completed", job
        assert job["progress"]["tasks"]["total"] == 5
        assert svc.output_rows(job["id"]) == expected_output(10_000, bad_every=500)

        # An audio job over the server's folder: the lent machine gets the files from the web.
        music = audio_folder(tmp_path)
        response = httpx.post(
            f"{svc.base}/api/jobs/audio", json={"prefix": music.as_uri(), "pool": pool},
            timeout=10,
        )  # fmt: skip
        assert response.status_code == 202, response.text
        audio = svc.wait_state(response.json()["id"], {"completed", "failed"}, timeout=180)
        assert audio["state"] == "completed", audio
        assert audio["progress"]["rows"]["done"] == 3 and audio["progress"]["rows"]["failed"] == 1
        tracks = httpx.get(f"{svc.base}/api/tracks", params={"limit": 10}, timeout=10).json()
        by_title = {t["title"]: t for t in tracks["items"]}
        assert by_title["a440.wav"]["state"] == "vectorized"
        assert by_title["broken.mp3"]["state"] == "unavailable"
        done_by = {t["worker"] for t in _tasks(svc, job["id"]) + _tasks(svc, audio["id"])}
        assert done_by == {"lent"}

        # Revoked: the socket closes and the worker exits 3, at once.
        revoked_at = time.monotonic()
        answer = httpx.delete(f"{svc.base}/api/workers/{paired_id}", timeout=10)
        assert answer.status_code == 200, answer.text
        code = worker.wait(timeout=15)
        took = time.monotonic() - revoked_at
        print(f"revoked worker exited in {took:.2f} s")
        assert code == EXIT_REVOKED, svc.logs()
        refused = httpx.post(
            f"{svc.base}/api/workers/refresh", json={},
            headers={"Authorization": f"Bearer {token}"}, timeout=10,
        )  # fmt: skip
        assert refused.status_code == 401
    finally:
        codes = svc.stop_all()
    assert codes["web"] == 0, svc.logs()
    for name in ("web", "lent"):
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert token not in text and token[4:] not in text, f"the token is in {name}'s log"
        assert pairing["code"] not in text and pairing["code"].replace("-", "") not in text


def _tasks(svc: Services, job_id: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(svc.env["DATABASE_URL"].removeprefix("sqlite:///"))
    try:
        rows = db.execute("select worker from tasks where job_id = ?", (job_id,)).fetchall()
    finally:
        db.close()
    return [{"worker": r[0]} for r in rows]
