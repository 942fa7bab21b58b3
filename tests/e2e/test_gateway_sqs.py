"""Gateway workers on SQS + S3 (moto) + PostgreSQL: the web, the dispatcher and paired
workers as processes; the workers know only the web's address.

1. A gateway worker SIGKILLed while it holds tasks: the web sees its socket close and
   gives the tasks back at once (visibility 0), so another worker of the pool runs them
   within seconds, not after the 60 s visibility timeout. Each runs once, and a CSV job
   then runs exactly on the surviving worker through presigned URLs.
2. A gateway worker that holds a task longer than the visibility timeout while alive runs
   it exactly once: the gateway extends the lease, the pool's other worker never gets it.

Neither worker ever holds a broker or storage credential: the pairing (and refresh)
answers carry none, and the services' AWS key id and secret, unique to the test, appear
in no worker output and no saved worker config.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest

from services.worker import config
from services.worker.pairing_client import check_server
from tests.e2e.harness import SPEC, Services, expected_output, make_csv, wait_for
from tests.servers import MotoServer, PostgresServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

#: Long enough that "back after the visibility timeout" cannot pass for "back at once".
LONG_VISIBILITY = 60
#: The killed worker's tasks must run elsewhere within this (the gateway needs ~1-3 s).
BACK_WITHIN = 20.0
#: Each canary task of the kill test holds its worker at least this long, and at least
#: twice as long as the first worker took to start: the killed worker must still hold its
#: tasks once the second has started (imports and the audio warm-up: 7 s idle, more on a
#: loaded machine).
MIN_HOLD = 20.0
CSV_ROWS = 10_000  # CHUNK_ROWS=2500: four tasks
#: The second test: a task that outlasts the visibility timeout several times over.
SHORT_VISIBILITY = 6
LONG_TASK = 15.0  # two and a half timeouts: the gateway extends the lease every 2 s
CANARY_START = re.compile(r"\baction=canary_start\b.*?\btask_id=(\S+)")


@dataclass
class Cloud:
    """The web and the dispatcher on SQS + S3 + PostgreSQL, and the services' AWS keys."""

    svc: Services
    pg: PostgresServer
    database: str
    key_id: str
    secret: str

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call as the harness's admin (their API token; a worker token passed in
        ``headers`` replaces it)."""
        return self.svc.client.request(method, path, timeout=30, **kwargs)


@pytest.fixture
def start_cloud(
    tmp_path: Path, moto: MotoServer, postgres: PostgresServer, pg_url: str
) -> Iterator[Callable[[int], Cloud]]:
    """``start_cloud(visibility)``: web + dispatcher up, with AWS credentials of their own
    (moto takes any) so that a leak to a worker can be looked for."""
    started: list[Services] = []

    def start(visibility: int) -> Cloud:
        key_id, secret = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"sk{uuid.uuid4().hex}"
        bucket = f"conveyor-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3", endpoint_url=moto.endpoint, region_name=moto.region,
            aws_access_key_id=key_id, aws_secret_access_key=secret,
        ).create_bucket(Bucket=bucket)  # fmt: skip
        host = moto.endpoint.removeprefix("http://")
        svc = Services.configure(
            tmp_path,
            BROKER_URL=f"sqs://{quote(key_id, safe='')}:{quote(secret, safe='')}@{host}",
            DATABASE_URL=pg_url,
            STORAGE_URL=f"s3://{bucket}/conveyor",
            SQS_VISIBILITY_TIMEOUT=str(visibility),
            SQS_WAIT_SECONDS="1",
            CHUNK_ROWS="2500",
            HEARTBEAT_SECONDS="1",
            WORKER_TOKEN_KEY=uuid.uuid4().hex + uuid.uuid4().hex,
            **{**moto.env, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret},
        )
        started.append(svc)
        svc.start_web()
        svc.start("dispatcher", "services.dispatcher")
        return Cloud(svc, postgres, pg_url.rsplit("/", 1)[1], key_id, secret)

    try:
        yield start
    finally:
        for svc in started:
            svc.stop_all()


# -- paired workers ------------------------------------------------------------------------
def worker_env(cloud: Cloud, name: str) -> dict[str, str]:
    """No broker, database, storage or AWS settings: only what a lent machine has. Its
    STORAGE_URL is a folder that never exists: any direct use of storage would make it."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "NUMBA_CACHE_DIR", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        CONVEYOR_CONFIG_DIR=str(cloud.svc.tmp / f"config-{name}"),
        STORAGE_URL=f"file://{cloud.svc.tmp / f'nowhere-{name}'}",
        LOG_LEVEL="INFO", PYTHONUNBUFFERED="1", SHUTDOWN_GRACE_SECONDS="10",
    )  # fmt: skip
    return env


def start_worker(cloud: Cloud, name: str, *args: str) -> None:
    argv = ("--server", cloud.svc.base, "--plain", "--name", name, *args)
    cloud.svc.start_with_env(name, worker_env(cloud, name), "services.worker", *argv)


def saved_pairing(cloud: Cloud, name: str) -> dict[str, str]:
    file = config.path(worker_env(cloud, name))
    return dict(json.loads(file.read_text()))


def new_code(cloud: Cloud, **body: str) -> dict[str, Any]:
    response = cloud.api("POST", "/api/pairings", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def assert_no_credentials(cloud: Cloud, answer: httpx.Response) -> None:
    """A pairing or refresh answer: the gateway, and no broker or storage to reach."""
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["transport"] == "gateway", body
    assert body["broker_url"] == "" and body["storage_url"] is None, body
    assert body["task_urls"] is True, body
    assert cloud.secret not in answer.text and cloud.key_id not in answer.text


def assert_clean(cloud: Cloud, *names: str) -> None:
    """No AWS key, broker URL or presigned URL in a worker's output or saved config, and
    its own storage folder never made."""
    for name in names:
        text = (cloud.svc.tmp / f"{name}.log").read_text(errors="replace")
        text += config.path(worker_env(cloud, name)).read_text()
        for secret in (cloud.secret, cloud.key_id, "sqs://", "X-Amz-Signature"):
            assert secret not in text, f"{secret!r} in what worker {name} printed or saved"
        assert not (cloud.svc.tmp / f"nowhere-{name}").exists(), f"{name} used storage itself"


def stop_workers(cloud: Cloud, *names: str) -> dict[str, int]:
    """SIGTERM the workers while the web is still up, and their exit statuses. (A gateway
    worker told to stop while the web is away keeps reconnecting: see the report.)"""
    procs = {name: cloud.svc.procs[name] for name in names}
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return {name: proc.wait(30) for name, proc in procs.items()}


def workers(cloud: Cloud) -> dict[str, dict[str, Any]]:
    response = cloud.api("GET", "/api/workers", params={"limit": 100})
    assert response.status_code == 200, response.text
    return {w["name"]: w for w in response.json()["items"]}


def wait_online(cloud: Cloud, *names: str) -> None:
    """Online in the registry: their beats went through the gateway's consumer, so each
    socket's broker side is serving."""
    wait_for(
        lambda: all(workers(cloud).get(n, {}).get("status") == "online" for n in names),
        60, f"{names} online\n{cloud.svc.logs()}",
    )  # fmt: skip


def canary_starts(cloud: Cloud, name: str) -> list[str]:
    """The ids of the canary tasks worker ``name`` started, in order (repeats kept)."""
    text = (cloud.svc.tmp / f"{name}.log").read_text(errors="replace")
    return [m.group(1) for m in CANARY_START.finditer(text)]


def submit_canary(cloud: Cloud, tasks: int, seconds: float, pool: str) -> str:
    body = {"tasks": tasks, "seconds": seconds, "pool": pool}
    response = cloud.api("POST", "/api/jobs/canary", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def submit_csv(cloud: Cloud, path: Path, pool: str) -> str:
    with path.open("rb") as f:
        response = cloud.api(
            "POST", "/api/jobs/csv", files={"file": (path.name, f)},
            data={"mapping": SPEC, "pool": pool},
        )  # fmt: skip
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def task_rows(cloud: Cloud, job_id: str) -> dict[str, tuple[str, str | None, int]]:
    """Each task of the job, by id: (state, the worker that did it, results recorded)."""
    with cloud.pg.connect(cloud.database) as conn:
        rows = conn.execute(
            "SELECT id, state, worker, attempts FROM tasks WHERE job_id = %s", (job_id,)
        ).fetchall()
    return {task_id: (state, worker, attempts) for task_id, state, worker, attempts in rows}


# -- the tests -----------------------------------------------------------------------------
def test_a_killed_gateway_workers_tasks_run_elsewhere_at_once(
    start_cloud: Callable[[int], Cloud], tmp_path: Path
) -> None:
    cloud = start_cloud(LONG_VISIBILITY)
    svc = cloud.svc
    # Worker X is paired here, so the pairing answer itself is checked; its token is saved
    # as the worker saves it, and the worker resumes with it (a refresh).
    first = new_code(cloud)
    pool = first["pool"]
    # As a worker pairs: with the code alone, no user token.
    paired = httpx.post(
        f"{svc.base}/api/workers/pair", json={"code": first["code"], "name": "gx"}, timeout=30
    )
    assert_no_credentials(cloud, paired)
    saved = config.SavedWorker(
        check_server(svc.base), paired.json()["worker_id"], paired.json()["token"], "gx"
    )
    config.save(config.path(worker_env(cloud, "gx")), saved)
    booting = time.monotonic()
    start_worker(cloud, "gx", "--concurrency", "3")
    wait_online(cloud, "gx")
    hold = max(MIN_HOLD, 2 * (time.monotonic() - booting))

    job_id = submit_canary(cloud, 3, hold, pool)
    held = wait_for(
        lambda: len(set(ids := canary_starts(cloud, "gx"))) == 3 and ids,
        60, f"worker X holding all three tasks\n{svc.logs()}",
    )  # fmt: skip
    wait_for(
        lambda: (w := workers(cloud)["gx"])["in_flight"] == 3 and w["current_job"] == job_id,
        15, "the registry to show X's three tasks",
    )  # fmt: skip

    # Worker Y joins the pool with a code of its own, and waits: every task is X's.
    second = new_code(cloud, pool=pool)
    assert second["pool"] == pool
    start_worker(cloud, "gy", "--code", second["code"], "--concurrency", "4")
    wait_online(cloud, "gy")
    token = saved_pairing(cloud, "gy")["token"]
    refreshed = cloud.api(
        "POST", "/api/workers/refresh", json={}, headers={"Authorization": f"Bearer {token}"}
    )
    assert_no_credentials(cloud, refreshed)
    assert canary_starts(cloud, "gy") == []
    progress = svc.job(job_id)["progress"]["tasks"]
    assert progress["done"] == 0, f"X must still hold its tasks (raise MIN_HOLD): {progress}"

    svc.procs["gx"].kill()
    killed_at = time.monotonic()
    taken: dict[str, float] = {}

    def all_taken() -> bool:
        for task_id in canary_starts(cloud, "gy"):
            taken.setdefault(task_id, time.monotonic() - killed_at)
        return set(held) <= set(taken)

    wait_for(all_taken, LONG_VISIBILITY + 30, f"X's tasks on Y\n{svc.logs()}", step=0.05)
    back = max(taken[task_id] for task_id in held)
    # Slot four of Y: a CSV job, through presigned URLs, alongside the canary tasks.
    make_csv(tmp_path / "in.csv", CSV_ROWS, bad_every=1000)
    csv_job = submit_csv(cloud, tmp_path / "in.csv", pool)
    job = svc.wait_state(job_id, {"completed", "failed"}, timeout=hold + 60)
    finished = time.monotonic() - killed_at
    print(
        f"\ngateway on SQS: a SIGKILLed worker's 3 tasks started on another worker "
        f"{min(taken.values()):.2f}-{back:.2f} s after the kill, the job completed after "
        f"{finished:.1f} s (visibility timeout {LONG_VISIBILITY} s, tasks of {hold:.0f} s)"
    )
    assert back < BACK_WITHIN, f"back after {back:.1f} s: the visibility timeout, not the gateway"
    assert job["state"] == "completed", job
    assert job["progress"]["tasks"] == {"total": 3, "done": 3, "failed": 0}
    assert task_rows(cloud, job_id) == dict.fromkeys(held, ("done", "gy", 1))
    # Each task ran on Y exactly once: given back, not copied. (X may have started one
    # twice: a reconnect of X under heavy load gives its tasks back and it takes them
    # again; its SIGKILL is what this test is about.)
    assert set(canary_starts(cloud, "gx")) == set(held)
    assert Counter(canary_starts(cloud, "gy")) == dict.fromkeys(held, 1)

    done = svc.wait_state(csv_job, {"completed", "failed"}, timeout=90)
    assert done["state"] == "completed", done
    assert done["progress"]["tasks"] == {"total": 4, "done": 4, "failed": 0}
    assert done["progress"]["rows"]["failed"] == CSV_ROWS // 1000
    assert svc.output_rows(csv_job) == expected_output(CSV_ROWS, bad_every=1000)
    assert {row[:2] for row in task_rows(cloud, csv_job).values()} == {("done", "gy")}

    codes = stop_workers(cloud, "gx", "gy")
    assert codes == {"gx": -signal.SIGKILL, "gy": 0}, (codes, svc.logs())
    assert_clean(cloud, "gx", "gy")


def test_a_gateway_task_longer_than_the_visibility_timeout_runs_once(
    start_cloud: Callable[[int], Cloud],
) -> None:
    cloud = start_cloud(SHORT_VISIBILITY)
    svc = cloud.svc
    first = new_code(cloud)
    pool = first["pool"]
    second = new_code(cloud, pool=pool)
    start_worker(cloud, "g1", "--code", first["code"])
    start_worker(cloud, "g2", "--code", second["code"])
    wait_online(cloud, "g1", "g2")

    started = time.monotonic()
    job_id = submit_canary(cloud, 1, LONG_TASK, pool)
    job = svc.wait_state(job_id, {"completed", "failed"}, timeout=LONG_TASK + 60)
    took = time.monotonic() - started
    print(
        f"\ngateway on SQS: a {LONG_TASK} s task (visibility {SHORT_VISIBILITY} s) "
        f"completed {took:.1f} s after it was submitted"
    )
    assert job["state"] == "completed", job
    assert job["progress"]["tasks"] == {"total": 1, "done": 1, "failed": 0}
    ((task_id, (state, holder, attempts)),) = task_rows(cloud, job_id).items()
    assert (state, attempts) == ("done", 1)
    assert holder in ("g1", "g2")
    other = "g2" if holder == "g1" else "g1"
    assert canary_starts(cloud, holder) == [task_id], svc.logs()
    assert canary_starts(cloud, other) == [], f"the task ran on both workers\n{svc.logs()}"
    counts = wait_for(
        lambda: (ws := workers(cloud))[holder]["processed"] == 1 and ws,
        15, "the registry to count the task",
    )  # fmt: skip
    assert counts[other]["processed"] == 0

    codes = stop_workers(cloud, "g1", "g2")
    assert codes == {"g1": 0, "g2": 0}, (codes, svc.logs())
    assert_clean(cloud, "g1", "g2")
