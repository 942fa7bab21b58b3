"""Proof across hosts: Linux network namespaces made by the test stand in for machines.

    cv-w1-<pid> ──veth 10.231.1.0/30──┐
                                      ├── cv-srv-<pid>: RabbitMQ, PostgreSQL, web, dispatcher
    cv-w2-<pid> ──veth 10.231.2.0/30──┘   (service address 10.231.0.1)

The server namespace runs RabbitMQ (listening on every address of its namespace),
PostgreSQL (loopback of its namespace only: workers never get database credentials, and
here could not even reach it), the web service and the dispatcher. The test itself runs
its HTTP calls and ``rabbitmqctl`` from the server namespace too (this thread enters it),
as a browser on that host would. Each worker runs in its own namespace and pairs over
HTTP across its veth link with its own code: worker 1 with a code for a fresh private
pool (remote worker mode), worker 2 with a code for the shared pool (a machine lent to
the shared pool). Storage is a ``file://`` folder: the namespaces share this machine's
filesystem (only the network is separate), so it stands in for S3. The workers reach
RabbitMQ as the least-privilege worker user of ``infra/rabbitmq.py`` (``guest`` stays
loopback-only), as a deployment would hand them.

1. A remote-mode CSV job runs only on worker 1 and a shared-pool one only on worker 2,
   every row exactly once.
2. Worker 1's cable is pulled (the server's end of its veth pair set down) while it
   runs a remote-mode canary task: it is shown offline, the broker closes its
   connections and hands the unacknowledged task back (the times are printed), worker 2
   stays online; with the cable back, the job completes on worker 1, each task once.
3. Worker 1 is revoked: it stops consuming within a heartbeat interval and exits 3 soon
   after (both printed), its token is refused by ``/api/workers/refresh``, no job can
   be submitted to its pool any more, and restarting it with ``--server`` fails.
4. No pairing code (with or without its dash) and no token appears in any output of the
   web service, the dispatcher or the workers, nor in RabbitMQ's or PostgreSQL's logs.

Namespaces need root and iproute2: without them this test fails, saying so; it never
skips. Everything it starts is stopped and the namespaces are deleted, even on failure.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from kombu import Connection

from infra import rabbitmq as infra_rabbitmq
from libs.common import topology
from services.worker.__main__ import AMQP_HEARTBEAT_SECONDS
from tests.conftest import in_ci
from tests.e2e.harness import ROOT, SPEC, expected_output, make_csv, wait_for, web_ready
from tests.netns import NetnsUnavailable, Topology
from tests.servers import PostgresServer, RabbitMQServer, ServerNotInstalled, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BEAT = 1.0  # HEARTBEAT_SECONDS: workers' heartbeats, and the revocation deadline
MISSED = 3  # OFFLINE_AFTER_MISSED
#: The AMQP heartbeat a worker asks for (RabbitMQ's default is 60 s; the smaller wins).
#: The broker closes a connection it has heard nothing on for two to three of them:
#: that bounds how long a worker cut off the network keeps its unacked tasks.
BROKER_HEARTBEAT = AMQP_HEARTBEAT_SECONDS
#: How long after one heartbeat interval a revoked worker's process may still be exiting.
REVOKE_SLACK = 2.0
W1, W2 = "w1", "w2"


@pytest.fixture
def net() -> Iterator[Topology]:
    """A server namespace and two worker namespaces, deleted afterwards."""
    topo = Topology.star(tag=str(os.getpid()), leaves=(W1, W2))
    try:
        topo.create()
        unavailable = None
    except NetnsUnavailable as exc:
        unavailable = str(exc)
    if unavailable is not None:
        pytest.fail(
            f"this test needs Linux network namespaces (root and iproute2) and does not "
            f"skip without them: {unavailable}",
            pytrace=False,
        )
    try:
        yield topo
    finally:
        topo.close()


@dataclass
class Cluster:
    """The servers and the services in the server namespace, the workers in theirs."""

    net: Topology
    tmp: Path
    rabbit: RabbitMQServer
    pg: PostgresServer
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_paths: dict[str, Path] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.net.address}:{self.env['PORT']}"

    def ns(self, worker: str) -> str:
        return next(n for n in self.net.links if n.startswith(f"cv-{worker}-"))

    def worker_user(self, prefix: str) -> str:
        """The least-privilege worker user of infra/rabbitmq.py, as an operator makes it:
        paired workers get its URL, so every test here runs with its rights only."""
        password = uuid.uuid4().hex
        doc = infra_rabbitmq.definitions(
            prefix, ("shared",), 5, worker_user="lender", worker_password=password
        )
        file = self.tmp / "definitions.json"
        file.write_text(json.dumps(doc))
        self.rabbit.rabbitmqctl("import_definitions", str(file))
        return f"amqp://lender:{password}@{self.net.address}:{self.rabbit.port}/"

    def configure(self) -> None:
        storage = f"file://{self.tmp / 'storage'}"
        prefix = f"n{uuid.uuid4().hex[:10]}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BROKER_", "DATABASE_", "STORAGE_", "WORKER_", "CONVEYOR_"))
        }
        env.update(
            HOST="0.0.0.0", PORT=str(free_port()),
            BROKER_URL=self.rabbit.url, DATABASE_URL=self.pg.url,
            # The namespaces share the filesystem: a folder stands in for S3 here.
            STORAGE_URL=storage, WORKER_STORAGE_URL=storage,
            WORKER_BROKER_URL=self.worker_user(prefix),
            WORKER_TOKEN_KEY=uuid.uuid4().hex + uuid.uuid4().hex,
            QUEUE_PREFIX=prefix,
            HEARTBEAT_SECONDS=str(BEAT), OFFLINE_AFTER_MISSED=str(MISSED),
            CHUNK_ROWS="100", LOG_LEVEL="INFO", SHUTDOWN_GRACE_SECONDS="10",
            PYTHONUNBUFFERED="1",
        )  # fmt: skip
        self.env = env

    def worker_env(self, worker: str) -> dict[str, str]:
        """No broker, database or storage settings: a paired worker gets them from the
        server (and could not reach the database anyway)."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "NUMBA_CACHE_DIR", "VIRTUAL_ENV")
        env = {k: v for k, v in os.environ.items() if k in keep}
        config_dir = self.tmp / f"config-{worker}"
        env.update(
            CONVEYOR_CONFIG_DIR=str(config_dir), LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
            SHUTDOWN_GRACE_SECONDS="10",
        )  # fmt: skip
        return env

    def start(
        self, name: str, ns: str, argv: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """``argv`` in namespace ``ns``; its stdout and stderr go to ``<name>.log``
        (appended: a restarted process keeps its earlier output)."""
        path = self.tmp / f"{name.split('#')[0]}.log"
        log = path.open("ab")
        self._files.append(log)
        proc = subprocess.Popen(
            [*self.net.exec_prefix(ns), *argv],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs[name] = proc
        self.log_paths[name.split("#")[0]] = path
        return proc

    def start_services(self) -> None:
        py = sys.executable
        self.start("web", self.net.hub, [py, "-m", "services.web"], self.env)
        wait_for(self._ready, 60, f"{self.base}/readyz\n{self.logs()}")
        self.start("dispatcher", self.net.hub, [py, "-m", "services.dispatcher"], self.env)

    def start_worker(self, worker: str, *args: str, run: str = "") -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "services.worker", "--server", self.base, "--plain"]
        return self.start(
            f"{worker}{run}", self.ns(worker), [*argv, *args], self.worker_env(worker)
        )

    def _ready(self) -> bool:
        return web_ready(self.procs["web"], self.base, self.logs)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base}{path}", timeout=30, **kwargs)

    def workers(self) -> dict[str, dict[str, Any]]:
        response = self.api("GET", "/api/workers", params={"limit": 100})
        assert response.status_code == 200, response.text
        return {w["name"]: w for w in response.json()["items"]}

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name, path in self.log_paths.items():
            text = path.read_text(errors="replace").splitlines()
            parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def all_output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_paths.values())

    def stop_all(self, timeout: float = 20) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for f in self._files:
            f.close()


@pytest.fixture
def cluster(net: Topology, tmp_path: Path) -> Iterator[Cluster]:
    """RabbitMQ, PostgreSQL, web and dispatcher up in the server namespace; this thread
    stays in that namespace until teardown."""
    with contextlib.ExitStack() as stack:
        rabbit = RabbitMQServer(
            # RabbitMQ's defaults (the worker asks for its own heartbeat). guest stays
            # loopback-only: the workers log in as the least-privilege user.
            listen="0.0.0.0",
        )
        stack.callback(rabbit.close)
        pg = PostgresServer()
        stack.callback(pg.close)
        # Their directories, and the watchdogs that clean them up if this process dies,
        # are made here, outside the namespaces (whose processes are all killed then).
        assert rabbit.dir.exists() and pg.dir.exists()
        stack.enter_context(net.entered(net.hub))
        try:
            rabbit.start()
            pg.start()
        except ServerNotInstalled as exc:
            message = f"{exc}: run scripts/install-servers (or scripts/test, which does)"
            if in_ci():
                pytest.fail(f"CI is set, refusing to skip: {message}", pytrace=False)
            pytest.skip(message)
        cluster = Cluster(net, tmp_path, rabbit, pg)
        stack.callback(cluster.stop_all)
        cluster.configure()
        cluster.start_services()
        yield cluster


def new_code(cluster: Cluster, **body: str) -> dict[str, Any]:
    response = cluster.api("POST", "/api/pairings", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def saved_pairing(cluster: Cluster, worker: str) -> dict[str, str]:
    """The worker's saved config (worker.json in its CONVEYOR_CONFIG_DIR): id and token."""
    file = Path(cluster.worker_env(worker)["CONVEYOR_CONFIG_DIR"]) / "worker.json"
    return dict(json.loads(file.read_text()))


def submit_csv(cluster: Cluster, path: Path, pool: str | None = None) -> str:
    data = {"mapping": SPEC, **({"pool": pool} if pool else {})}
    with path.open("rb") as f:
        response = cluster.api("POST", "/api/jobs/csv", files={"file": (path.name, f)}, data=data)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def job(cluster: Cluster, job_id: str) -> dict[str, Any]:
    response = cluster.api("GET", f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_final(cluster: Cluster, job_id: str, timeout: float = 90) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        j = job(cluster, job_id)
        return j if j["state"] in ("completed", "failed", "cancelled") else None

    return dict(wait_for(final, timeout, f"job {job_id} to finish\n{cluster.logs()}"))


def output_rows(cluster: Cluster, job_id: str) -> list[list[str]]:
    response = cluster.api("GET", f"/api/jobs/{job_id}/output")
    assert response.status_code == 200, response.text
    return list(csv.reader(io.StringIO(response.text, newline="")))


def task_workers(cluster: Cluster, job_id: str) -> dict[int, tuple[str, str | None]]:
    """Each task of the job, by sequence: (state, the name of the worker that did it)."""
    with cluster.pg.connect(cluster.pg.database) as conn:
        rows = conn.execute(
            "SELECT seq, state, worker FROM tasks WHERE job_id = %s", (job_id,)
        ).fetchall()
    return {seq: (state, worker) for seq, state, worker in rows}


def queue_stats(cluster: Cluster, pool: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``pool``'s task queue, from the broker itself."""
    name = topology.task_queue(cluster.env["QUEUE_PREFIX"], pool, 5).name
    with Connection(cluster.rabbit.url, connect_timeout=5) as conn:
        ok = conn.default_channel.queue_declare(queue=name, passive=True)
    return int(ok.message_count), int(ok.consumer_count)


def control_consumers(cluster: Cluster) -> int:
    """How many workers consume a control queue now (RabbitMQ names those: amq.gen-…)."""
    out = cluster.rabbit.rabbitmqctl("list_queues", "name", "consumers", "--silent")
    pairs = (line.rsplit(None, 1) for line in out.splitlines() if line.strip())
    return sum(1 for name, n in pairs if name.startswith("amq.gen-") and n.isdigit() and int(n))


def peers(cluster: Cluster) -> set[str]:
    """Addresses of the clients connected to RabbitMQ, as the broker sees them."""
    return set(cluster.rabbit.rabbitmqctl("list_connections", "peer_host", "--silent").split())


def refresh(cluster: Cluster, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return cluster.api("POST", "/api/workers/refresh", json={"name": W1}, headers=headers)


def test_paired_workers_on_other_hosts(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    w1_ns, w2_ns = c.ns(W1), c.ns(W2)

    # -- pairing over HTTP across each worker's own link ---------------------------------
    p1 = new_code(c)  # remote worker mode: a fresh private pool
    p2 = new_code(c, pool="shared")  # a machine lent to the shared pool
    pool1 = p1["pool"]
    assert pool1.startswith("remote-") and p2["pool"] == "shared"
    c.start_worker(W1, "--code", p1["code"], "--name", W1)
    c.start_worker(W2, "--code", p2["code"], "--name", W2)
    listed = wait_for(
        lambda: (ws := c.workers())
        and all(ws.get(n, {}).get("status") == "online" for n in (W1, W2))
        and ws,
        90, f"both workers online\n{c.logs()}",
    )  # fmt: skip
    saved = {w: saved_pairing(c, w) for w in (W1, W2)}
    assert listed[W1]["pool"] == pool1 and listed[W2]["pool"] == "shared"
    for w, p in ((W1, p1), (W2, p2)):
        assert listed[w]["paired_id"] == saved[w]["worker_id"]
        view = c.api("GET", f"/api/pairings/{p['id']}").json()
        assert view["state"] == "connected"
        assert view["worker"] == {"id": saved[w]["worker_id"], "name": w}
    # The workers' broker connections come from their own hosts, across their links.
    w1_addr, w2_addr = (c.net.links[n].leaf_address for n in (w1_ns, w2_ns))
    assert {w1_addr, w2_addr} <= peers(c)

    # -- a remote-mode job runs on its paired worker, a shared-pool job on the other -----
    rows = 1000  # CHUNK_ROWS=100: 10 tasks each
    make_csv(tmp_path / "in.csv", rows)
    remote_job = submit_csv(c, tmp_path / "in.csv", pool=pool1)
    shared_job = submit_csv(c, tmp_path / "in.csv")
    for job_id, pool, worker in ((remote_job, pool1, W1), (shared_job, "shared", W2)):
        done = wait_final(c, job_id)
        assert done["state"] == "completed", done
        assert done["pool"] == pool
        assert done["progress"]["rows"] == {"total": rows, "done": rows, "failed": 0, "filtered": 0}
        assert done["progress"]["tasks"] == {"total": 10, "done": 10, "failed": 0}
        assert output_rows(c, job_id) == expected_output(rows)
        assert task_workers(c, job_id) == {seq: ("done", worker) for seq in range(10)}
    counts = wait_for(
        lambda: (ws := c.workers())[W1]["processed"] >= 10 and ws[W2]["processed"] >= 10 and ws,
        10, "the registry to count the tasks",
    )  # fmt: skip
    assert counts[W1]["processed"] == counts[W2]["processed"] == 10

    # -- worker 1's cable pulled mid-job: its task comes back, nothing is lost ----------
    tasks, seconds = 3, 3.0
    response = c.api(
        "POST", "/api/jobs/canary", json={"tasks": tasks, "seconds": seconds, "pool": pool1}
    )
    assert response.status_code == 202, response.text
    canary = str(response.json()["id"])
    wait_for(
        lambda: (w := c.workers()[W1])["current_job"] == canary and w["in_flight"] >= 1,
        30, f"worker 1 to run a canary task\n{c.logs()}", 0.05,
    )  # fmt: skip
    assert queue_stats(c, pool1)[1] == 1  # worker 1 is the pool's only consumer
    cut = time.monotonic()
    c.net.set_link(w1_ns, up=False)
    offline = wait_for(
        lambda: c.workers()[W1]["status"] == "offline" and time.monotonic() - cut,
        30, "worker 1 to be shown offline", 0.1,
    )  # fmt: skip
    # The broker drops the connection it no longer hears from and requeues what it had
    # delivered on it: every task of the job is ready again (none could finish).
    handed_back = wait_for(
        lambda: queue_stats(c, pool1) == (tasks, 0) and time.monotonic() - cut,
        4 * BROKER_HEARTBEAT + 15, f"the broker to hand back worker 1's task\n{c.logs()}", 0.1,
    )  # fmt: skip
    print(
        f"\nworker 1's link cut while it ran a {seconds:.0f} s canary task: shown offline "
        f"after {offline:.2f} s ({MISSED} x {BEAT:.0f} s heartbeats); the broker closed its "
        f"connection and handed the task back after {handed_back:.2f} s (AMQP heartbeat "
        f"{BROKER_HEARTBEAT} s)"
    )
    assert w1_addr not in peers(c)
    assert c.workers()[W2]["status"] == "online"  # the other host is unaffected
    c.net.set_link(w1_ns, up=True)
    plugged = time.monotonic()
    done = wait_final(c, canary, timeout=90)
    recovered = time.monotonic() - plugged
    assert done["state"] == "completed", done
    assert done["progress"]["tasks"] == {"total": tasks, "done": tasks, "failed": 0}
    assert task_workers(c, canary) == {seq: ("done", W1) for seq in range(tasks)}
    print(
        f"link back up: the job ({tasks} tasks) completed {recovered:.2f} s later, each task once"
    )
    wait_for(lambda: c.workers()[W1]["status"] == "online", 30, "worker 1 back online")
    # Revocation reaches a worker on its control queue (a broadcast), which its second
    # connection consumes; that connection reconnects on its own (within 2 s) after an
    # outage. Both connections are back before the revocation, so that it is timed here.
    wait_for(
        lambda: control_consumers(c) == 2, 60, f"both workers' control queues\n{c.logs()}", 0.5
    )

    # -- revocation: worker 1 stops within a heartbeat, its token is refused -------------
    token1 = saved[W1]["token"]
    config1 = Path(c.worker_env(W1)["CONVEYOR_CONFIG_DIR"]) / "worker.json"
    kept = config1.read_bytes()  # as a copy of the file elsewhere would be
    assert refresh(c, token1).status_code == 200
    began = time.monotonic()
    revoked = c.api("DELETE", f"/api/workers/{saved[W1]['worker_id']}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"]
    w1 = c.procs[W1]
    wait_for(lambda: queue_stats(c, pool1)[1] == 0, 10, "worker 1 to stop consuming", 0.02)
    stopped_taking = time.monotonic() - began
    wait_for(lambda: w1.poll() is not None, 30, f"worker 1 to exit\n{c.logs()}", 0.02)
    exited = time.monotonic() - began
    print(
        f"revoked worker 1: it stopped consuming after {stopped_taking:.2f} s and exited "
        f"(code {w1.returncode}) after {exited:.2f} s (heartbeat interval {BEAT:.0f} s)"
    )
    assert w1.returncode == 3, c.logs()
    assert "revoked" in c.log_paths[W1].read_text()
    assert stopped_taking <= BEAT
    assert exited <= BEAT + REVOKE_SLACK
    refused = refresh(c, token1)
    assert refused.status_code == 401, refused.text
    assert c.api("POST", "/api/jobs/canary", json={"tasks": 1, "seconds": 0, "pool": pool1}
                 ).status_code == 409  # fmt: skip
    # Restarting it: the server refuses the saved token; the worker says it was revoked
    # and deletes the token...
    assert config1.read_bytes() == kept
    again = c.start_worker(W1, run="#2")
    assert again.wait(60) == 1
    tail = c.log_paths[W1].read_text().splitlines()[-2:]
    assert "revoked" in tail[0] and "pair again" in tail[1], tail
    assert not config1.exists()
    # ...so the next start wants a new code.
    again = c.start_worker(W1, run="#3")
    assert again.wait(60) == 2
    assert "--code CODE is needed" in c.log_paths[W1].read_text().splitlines()[-1]
    assert c.workers()[W2]["status"] == "online"

    # -- nothing logged a pairing code or a token ----------------------------------------
    c.stop_all()
    output = c.all_output() + "".join(
        f.read_text(errors="replace")
        for f in (*c.rabbit.log_files(), *c.pg.log_files())
        if f.exists()
    )
    assert "revoked" in output and "paired" in output  # the logs are really there
    secrets = [saved[W1]["token"], saved[W2]["token"]]
    for p in (p1, p2):
        secrets += [p["code"], p["code"].replace("-", "")]
    leaked = [s for s in secrets if s.lower() in output.lower()]
    assert not leaked, f"{len(leaked)} pairing codes or tokens in the logs"
