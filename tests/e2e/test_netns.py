"""Proof across hosts: Linux network namespaces made by the test stand in for machines.

    cv-w1-<pid> ──veth 10.231.1.0/30──┐
                                      ├── cv-srv-<pid>: RabbitMQ, PostgreSQL, web, dispatcher
    cv-w2-<pid> ──veth 10.231.2.0/30──┘   (service address 10.231.0.1)

The server namespace runs RabbitMQ (listening on every address of its namespace),
PostgreSQL (its loopback only), the web service and the dispatcher, behind a firewall
(nftables, in the server namespace): from the worker links only the web's HTTP port is
reachable. The test itself runs its HTTP calls and ``rabbitmqctl`` from the server
namespace too (this thread enters it), as a browser on that host would. Each worker runs
in its own namespace and pairs over HTTP across its veth link with its own code: worker 1
with a code for a fresh private pool (remote worker mode), worker 2 with a code for the
shared pool (a machine lent to the shared pool). The web has no ``WORKER_BROKER_URL`` and
no ``WORKER_STORAGE_URL``, so both workers go through the gateway: their tasks over one
WebSocket (``/api/workers/connect``, the token in the handshake's header), their CSV input
and output through web-served task URLs (storage is a folder of the server).

0. From each worker host a TCP connect to the web's port succeeds and to RabbitMQ's and
   PostgreSQL's fails, though RabbitMQ does listen on the address the workers use.
1. Both pair and come online through the gateway: no broker connection from their hosts,
   and the pairing answer names no broker. A remote-mode CSV job runs only on worker 1
   and a shared-pool one only on worker 2, every row exactly once, their bytes carried by
   the web (its access log shows each task's PUT from the worker's own address).
2. Worker 1's cable is pulled (the server's end of its veth pair set down) in the middle of
   a CSV job while it holds tasks: it is shown offline, the gateway drops its silent socket
   and gives the held tasks back (the time is printed), worker 2 stays online and runs a
   shared job meanwhile; with the cable back, worker 1 reconnects and the job completes
   with exact output, each task done once.
3. Worker 1 is revoked: its socket is closed within a second (timed at the server, from the
   request to the end of the TCP connection; the worker's log line and its exit 3 are
   timed too), its token is refused by ``/api/workers/refresh`` and by the gateway, no job
   can be submitted to its pool any more, and restarting it with ``--server`` fails.
4. No pairing code (with or without its dash), no worker token (nor its part after
   ``cvw_``), and neither the admin's password nor their API token (nor its part after
   ``cvu_``) appears in any output of the web service (its access log at INFO included, whose
   ``WebSocket /api/workers/connect`` upgrade lines are there), the dispatcher or the
   workers, nor in RabbitMQ's or PostgreSQL's logs.

The web listens on a non-loopback address, so it runs with accounts
(``ACCOUNTS=required``): the test makes an admin and an API token with the web's CLI before
the web starts, and every HTTP call it makes carries that token. The workers need none:
they pair with codes the admin asked for.

Namespaces need root, iproute2 and nftables: without them this test fails, saying so; it
never skips. Everything it starts is stopped and the namespaces are deleted, even on
failure.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
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
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from libs.common import frames, pairing, topology
from tests.conftest import in_ci
from tests.e2e.harness import (
    ROOT,
    SPEC,
    Admin,
    accounts_env,
    expected_output,
    make_admin,
    make_csv,
    wait_for,
    web_ready,
)
from tests.netns import NetnsUnavailable, Topology, check_firewall, tcp_peers
from tests.servers import PostgresServer, RabbitMQServer, ServerNotInstalled, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BEAT = 1.0  # HEARTBEAT_SECONDS: workers' heartbeats (Beat frames through the gateway)
MISSED = 3  # OFFLINE_AFTER_MISSED
#: How soon after the revocation request the worker's socket must be closed.
REVOKE_CLOSE_SECONDS = 1.0
W1, W2 = "w1", "w2"
#: uvicorn's line for a WebSocket upgrade: ``ADDR:PORT - "WebSocket /api/…" [accepted]``.
UPGRADE = re.compile(rf'(\d+\.\d+\.\d+\.\d+):(\d+) - "WebSocket {frames.PATH}" \[accepted\]')


@pytest.fixture
def net() -> Iterator[Topology]:
    """A server namespace and two worker namespaces, deleted afterwards."""
    topo = Topology.star(tag=str(os.getpid()), leaves=(W1, W2))
    try:
        check_firewall()
        topo.create()
        unavailable = None
    except NetnsUnavailable as exc:
        unavailable = str(exc)
    if unavailable is not None:
        pytest.fail(
            f"this test needs Linux network namespaces (root, iproute2, nftables) and does "
            f"not skip without them: {unavailable}",
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
    admin: Admin | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_paths: dict[str, Path] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.env["PORT"])

    @property
    def base(self) -> str:
        return f"http://{self.net.address}:{self.port}"

    def ns(self, worker: str) -> str:
        return next(n for n in self.net.links if n.startswith(f"cv-{worker}-"))

    def address(self, worker: str) -> str:
        """The worker host's address on its link: where its connections come from."""
        return self.net.links[self.ns(worker)].leaf_address

    def configure(self) -> None:
        storage = f"file://{self.tmp / 'storage'}"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BROKER_", "DATABASE_", "STORAGE_", "WORKER_", "CONVEYOR_"))
        }
        env.update(accounts_env())  # bound to 0.0.0.0: a deployment, with logins
        # No WORKER_BROKER_URL: paired workers go through the gateway. No
        # WORKER_STORAGE_URL: their CSV input and output go through task URLs of the web.
        env.update(
            HOST="0.0.0.0", PORT=str(free_port()),
            BROKER_URL=self.rabbit.url, DATABASE_URL=self.pg.url, STORAGE_URL=storage,
            WORKER_TOKEN_KEY=uuid.uuid4().hex + uuid.uuid4().hex,
            QUEUE_PREFIX=f"n{uuid.uuid4().hex[:10]}",
            HEARTBEAT_SECONDS=str(BEAT), OFFLINE_AFTER_MISSED=str(MISSED),
            # INFO: uvicorn's access log and its WebSocket upgrade lines are written.
            CHUNK_ROWS="100", LOG_LEVEL="INFO", SHUTDOWN_GRACE_SECONDS="10",
            PYTHONUNBUFFERED="1",
        )  # fmt: skip
        self.env = env
        # This thread is in the server namespace: the CLI reaches PostgreSQL there.
        self.admin = make_admin(env)

    @property
    def headers(self) -> dict[str, str]:
        assert self.admin is not None, "configure() first"
        return self.admin.headers

    def worker_env(self, worker: str) -> dict[str, str]:
        """No broker, database or storage settings: a paired worker gets what it needs from
        the server (and could not reach the broker or the database anyway)."""
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
        return web_ready(self.procs["web"], self.base, self.logs, self.headers)

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A call as the admin (their API token; a worker token in ``headers`` replaces it)."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.base}{path}", headers=headers, timeout=30, **kwargs)

    def workers(self) -> dict[str, dict[str, Any]]:
        response = self.api("GET", "/api/workers", params={"limit": 100})
        assert response.status_code == 200, response.text
        return {w["name"]: w for w in response.json()["items"]}

    def log(self, name: str) -> str:
        return self.log_paths[name].read_text(errors="replace")

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name, path in self.log_paths.items():
            text = path.read_text(errors="replace").splitlines()
            parts.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def all_output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_paths.values())

    def stop_all(self, timeout: float = 20) -> None:
        """SIGTERM each process, the last started first (the workers before the web they
        are connected to); SIGKILL one still running ``timeout`` later."""
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for f in self._files:
            f.close()


@pytest.fixture
def cluster(net: Topology, tmp_path: Path) -> Iterator[Cluster]:
    """RabbitMQ, PostgreSQL, web and dispatcher up in the server namespace, behind its
    firewall; this thread stays in that namespace until teardown."""
    with contextlib.ExitStack() as stack:
        # RabbitMQ's defaults (the workers never reach it). It listens on every address,
        # the workers' too: the firewall, not the listener, keeps them out.
        rabbit = RabbitMQServer(listen="0.0.0.0")
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
        try:
            net.restrict([cluster.port])  # the worker hosts reach the web's port only
            refused = None
        except NetnsUnavailable as exc:
            refused = str(exc)
        if refused is not None:
            pytest.fail(f"this test needs a firewall in the server namespace: {refused}")
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


def assert_exact(cluster: Cluster, job_id: str, pool: str, worker: str, rows: int) -> None:
    """The CSV job completed on ``worker`` alone: every row once, each task done once."""
    tasks = rows // 100  # CHUNK_ROWS
    done = wait_final(cluster, job_id)
    assert done["state"] == "completed", done
    assert done["pool"] == pool
    assert done["progress"]["rows"] == {"total": rows, "done": rows, "failed": 0, "filtered": 0}
    assert done["progress"]["tasks"] == {"total": tasks, "done": tasks, "failed": 0}
    assert output_rows(cluster, job_id) == expected_output(rows)
    assert task_workers(cluster, job_id) == {seq: ("done", worker) for seq in range(tasks)}


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


def tasks_done(cluster: Cluster, job_id: str) -> int:
    return sum(1 for state, _ in task_workers(cluster, job_id).values() if state == "done")


def queue_stats(cluster: Cluster, pool: str) -> tuple[int, int]:
    """(messages ready, consumers) of ``pool``'s task queue, from the broker itself."""
    name = topology.task_queue(cluster.env["QUEUE_PREFIX"], pool, 5).name
    with Connection(cluster.rabbit.url, connect_timeout=5) as conn:
        ok = conn.default_channel.queue_declare(queue=name, passive=True)
    return int(ok.message_count), int(ok.consumer_count)


def peers(cluster: Cluster) -> set[str]:
    """Addresses of the clients connected to RabbitMQ, as the broker sees them."""
    return set(cluster.rabbit.rabbitmqctl("list_connections", "peer_host", "--silent").split())


def upgrades(cluster: Cluster, worker: str) -> list[int]:
    """The source ports of the worker's accepted gateway sockets, oldest first, from the
    web's log."""
    address = cluster.address(worker)
    return [int(m[2]) for m in UPGRADE.finditer(cluster.log("web")) if m[1] == address]


def refresh(cluster: Cluster, token: str, name: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return cluster.api("POST", "/api/workers/refresh", json={"name": name}, headers=headers)


def gateway_close(cluster: Cluster, worker: str, token: str) -> int | None:
    """From the worker's host, open a gateway socket with ``token`` as a worker does and
    say Hello: the close code the gateway answers with (None: it did not close)."""
    url = f"ws://{cluster.net.address}:{cluster.port}{frames.PATH}"
    headers = {"Authorization": f"Bearer {token}"}
    with (
        cluster.net.entered(cluster.ns(worker)),
        connect(url, additional_headers=headers, open_timeout=10) as ws,
    ):
        try:
            ws.send(frames.encode(frames.Hello(worker_id="again", name=worker)))
            ws.recv(timeout=10)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
        except TimeoutError:
            return None
    return None


def test_paired_workers_on_other_hosts(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    w1_ns, w2_ns = c.ns(W1), c.ns(W2)
    w1_addr, w2_addr = c.address(W1), c.address(W2)
    net = c.net

    # -- the worker hosts reach the web's port and nothing else of the server ----------
    assert net.reaches(net.hub, net.address, c.rabbit.port)  # RabbitMQ listens there...
    for ns in (w1_ns, w2_ns):
        assert net.reaches(ns, net.address, c.port), f"{ns} cannot reach the web"
        for what, port in (("RabbitMQ", c.rabbit.port), ("PostgreSQL", c.pg.port)):
            hub_end = net.links[ns].hub_address
            assert not net.reaches(ns, net.address, port), f"{ns} reaches {what}"
            assert not net.reaches(ns, hub_end, port), f"{ns} reaches {what} at {hub_end}"

    # -- pairing over HTTP across each worker's own link; tasks through the gateway ------
    p1 = new_code(c)  # remote worker mode: a fresh private pool
    p2 = new_code(c, pool="shared")  # a machine lent to the shared pool
    pool1 = p1["pool"]
    assert pool1.startswith("remote-") and p2["pool"] == "shared"
    # Worker 1 runs two tasks at once: at any moment of a job it holds one or two.
    c.start_worker(W1, "--code", p1["code"], "--name", W1, "--concurrency", "2")
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
        answer = refresh(c, saved[w]["token"], w)
        assert answer.status_code == 200, answer.text
        assert answer.json()["transport"] == "gateway" and answer.json()["broker_url"] == ""
        assert answer.json()["task_urls"] is True and answer.json()["storage_url"] is None
        assert upgrades(c, w), f"no gateway socket from {w}\n{c.logs()}"
    # Their sockets come from their own hosts; the broker sees none of them.
    assert not peers(c) & {w1_addr, w2_addr}, peers(c)

    # -- a remote-mode job runs on its paired worker, a shared-pool job on the other -----
    rows = 1000  # CHUNK_ROWS=100: 10 tasks each
    make_csv(tmp_path / "in.csv", rows)
    remote_job = submit_csv(c, tmp_path / "in.csv", pool=pool1)
    shared_job = submit_csv(c, tmp_path / "in.csv")
    assert_exact(c, remote_job, pool1, W1, rows)
    assert_exact(c, shared_job, "shared", W2, rows)
    counts = wait_for(
        lambda: (ws := c.workers())[W1]["processed"] >= 10 and ws[W2]["processed"] >= 10 and ws,
        10, "the registry to count the tasks",
    )  # fmt: skip
    assert counts[W1]["processed"] == counts[W2]["processed"] == 10
    # The bytes went through the web: each task's output part PUT from the worker's host.
    web_log = c.log("web")
    for job_id, addr in ((remote_job, w1_addr), (shared_job, w2_addr)):
        put = re.compile(rf'{re.escape(addr)}:\d+ - "PUT /api/workers/tasks/{job_id}-\d+/output ')
        assert len(put.findall(web_log)) == 10, f"{job_id}'s output parts from {addr}"

    # -- worker 1's cable pulled mid-job: the tasks it held come back, nothing is lost --
    big = 6000  # 60 tasks
    make_csv(tmp_path / "big.csv", big)
    cut_job = submit_csv(c, tmp_path / "big.csv", pool=pool1)
    wait_for(
        lambda: 2 <= tasks_done(c, cut_job) <= big // 100 - 10, 60,
        f"worker 1 to be in the middle of job {cut_job}\n{c.logs()}", 0.01,
    )  # fmt: skip
    cut = time.monotonic()
    net.set_link(w1_ns, up=False)
    during = submit_csv(c, tmp_path / "in.csv")  # the other host works on meanwhile
    offline = wait_for(
        lambda: c.workers()[W1]["status"] == "offline" and time.monotonic() - cut,
        30, "worker 1 to be shown offline", 0.1,
    )  # fmt: skip
    # The gateway drops the silent socket and gives back what it held: every task not
    # done is ready again, no consumer left on the pool (worker 1 was its only one).
    back = wait_for(
        lambda: queue_stats(c, pool1) == (big // 100 - tasks_done(c, cut_job), 0)
        and time.monotonic() - cut,
        30, f"the gateway to give worker 1's tasks back\n{c.logs()}", 0.05,
    )  # fmt: skip
    gave = rf"gateway for {saved[W1]['worker_id'][:12]}\.\S+: gave (\d+) tasks back to the queue"
    given = [int(n) for n in re.findall(gave, c.log("web"))]
    assert given and given[-1] >= 1, f"the gateway held no task of worker 1\n{c.logs()}"
    print(
        f"\nworker 1's link cut in the middle of a {big // 100}-task job: shown offline after "
        f"{offline:.2f} s ({MISSED} x {BEAT:.0f} s heartbeats); the gateway dropped its "
        f"socket and gave the {given[-1]} tasks it held back after {back:.2f} s"
    )
    assert c.workers()[W2]["status"] == "online"  # the other host is unaffected
    assert_exact(c, during, "shared", W2, rows)
    before = len(upgrades(c, W1))
    net.set_link(w1_ns, up=True)
    plugged = time.monotonic()
    assert_exact(c, cut_job, pool1, W1, big)
    recovered = time.monotonic() - plugged
    reconnected = len(upgrades(c, W1)) - before
    assert reconnected >= 1  # with its saved token: no new code
    print(
        f"link back up: worker 1 reconnected ({reconnected} new socket) and the job "
        f"completed {recovered:.2f} s later, exact output, each task done once"
    )
    wait_for(lambda: c.workers()[W1]["status"] == "online", 30, "worker 1 back online")

    # -- revocation: worker 1's socket is closed within a second, its token refused ------
    token1 = saved[W1]["token"]
    config1 = Path(c.worker_env(W1)["CONVEYOR_CONFIG_DIR"]) / "worker.json"
    kept = config1.read_bytes()  # as a copy of the file elsewhere would be
    assert refresh(c, token1, W1).status_code == 200
    socket1 = (w1_addr, upgrades(c, W1)[-1])  # its gateway socket now, as the server sees it
    assert socket1 in tcp_peers(c.port), (socket1, tcp_peers(c.port))
    w1 = c.procs[W1]
    began = time.monotonic()
    revoked = c.api("DELETE", f"/api/workers/{saved[W1]['worker_id']}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"]
    closed = wait_for(
        lambda: socket1 not in tcp_peers(c.port) and time.monotonic() - began,
        10, f"worker 1's socket to close\n{c.logs()}", 0.005,
    )  # fmt: skip
    heard = wait_for(
        lambda: "the gateway refused this worker" in c.log(W1) and time.monotonic() - began,
        10, f"worker 1 to log its revocation\n{c.logs()}", 0.01,
    )  # fmt: skip
    wait_for(lambda: queue_stats(c, pool1)[1] == 0, 10, "the gateway to stop consuming", 0.02)
    wait_for(lambda: w1.poll() is not None, 30, f"worker 1 to exit\n{c.logs()}", 0.02)
    exited = time.monotonic() - began
    print(
        f"revoked worker 1: the server closed its socket {closed:.3f} s after the request, "
        f"the worker logged it after {heard:.3f} s and exited (code {w1.returncode}) "
        f"after {exited:.2f} s"
    )
    assert closed < REVOKE_CLOSE_SECONDS
    assert w1.returncode == 3, c.logs()
    refused = refresh(c, token1, W1)
    assert refused.status_code == 401, refused.text
    assert gateway_close(c, W1, token1) == frames.UNAUTHORIZED  # reconnecting is refused
    assert c.api("POST", "/api/jobs/canary", json={"tasks": 1, "seconds": 0, "pool": pool1}
                 ).status_code == 409  # fmt: skip
    # Restarting it: the server refuses the saved token; the worker says it was revoked
    # and deletes the token...
    assert config1.read_bytes() == kept
    again = c.start_worker(W1, run="#2")
    assert again.wait(60) == 1
    tail = c.log(W1).splitlines()[-2:]
    assert "revoked" in tail[0] and "pair again" in tail[1], tail
    assert not config1.exists()
    # ...so the next start wants a new code.
    again = c.start_worker(W1, run="#3")
    assert again.wait(60) == 2
    assert "--code CODE is needed" in c.log(W1).splitlines()[-1]
    assert c.workers()[W2]["status"] == "online"

    # -- nothing logged a pairing code or a token ----------------------------------------
    w2 = c.procs[W2]
    w2.send_signal(signal.SIGTERM)  # a worker stops cleanly through the gateway
    assert w2.wait(30) == 0, c.logs()
    c.stop_all()
    output = c.all_output() + "".join(
        f.read_text(errors="replace")
        for f in (*c.rabbit.log_files(), *c.pg.log_files())
        if f.exists()
    )
    assert "revoked" in output and "paired" in output  # the logs are really there
    lines = [line for line in c.log("web").splitlines() if f'"WebSocket {frames.PATH}"' in line]
    assert any(w1_addr in line for line in lines) and any(w2_addr in line for line in lines)
    assert any('"POST /api/workers/refresh HTTP/1.1" 401' in line for line in output.splitlines())
    secrets = []
    for w in (W1, W2):
        token = saved[w]["token"]
        assert token.startswith(pairing.TOKEN_PREFIX)
        secrets += [token, token.removeprefix(pairing.TOKEN_PREFIX)]
    for p in (p1, p2):
        secrets += [p["code"], p["code"].replace("-", "")]
    assert c.admin is not None
    secrets += c.admin.secret_strings  # the admin's password and API token
    assert any(s.startswith("cvu_") for s in secrets)
    for line in lines:
        assert not any(s.lower() in line.lower() for s in secrets), line
    leaked = [s for s in secrets if s.lower() in output.lower()]
    assert not leaked, f"{len(leaked)} pairing codes, passwords or tokens in the logs"
