"""Linux network namespaces as separate hosts for a test: made, linked and removed by it.

Plain Python, no pytest. Needs root and iproute2 (``ip``), and nftables (``nft``) for a
firewall; ``NetnsUnavailable`` says why when one is missing or the kernel refuses.

    with Topology.star(tag=str(os.getpid()), leaves=("w1", "w2")) as net:
        net.hub            # "cv-srv-<tag>": the server host
        net.address        # 10.231.0.1: the hub's address, reachable from every leaf
        net.run("cv-w1-<tag>", "ping", "-c1", net.address)
        net.set_link("cv-w1-<tag>", up=False)    # cut that leaf's cable (at the hub)
        net.restrict([8000])  # the leaves reach the hub's TCP port 8000, nothing else
        net.reaches("cv-w1-<tag>", net.address, 8000)   # True: a TCP connect succeeds
        with net.entered(net.hub):  # this thread's sockets and children: on the hub
            tcp_peers(8000)         # who is connected to the hub's port 8000 now

The layout (``Topology.star``): a hub namespace and one namespace per leaf, each leaf
joined to the hub by its own veth pair on a /30 of 10.231.N.0 (N = 1, 2, …: hub .1, leaf
.2), ``lo`` up everywhere. The hub also holds a service address, 10.231.0.1/32 on its
``lo``, and every leaf routes to it through its own link (its default route): one address
for "the server" whatever the leaf, as on a real network. Nothing is added to the
namespace the test runs in; the veth pairs are created inside the namespaces.
``restrict(ports)`` puts a firewall in the hub: the leaves reach those TCP ports of it and
nothing else (nftables, in the hub's namespace only).

Nothing outlives the test:
- ``close()`` SIGKILLs every process still inside the namespaces (``ip netns pids``; never
  this process, even if one of its threads is in one) and deletes them; deleting a
  namespace deletes its veth ends;
- a watchdog process does the same if the test process dies without ``close()``;
- ``reap_stale()`` (called by ``create()``) removes namespaces named ``cv-<host>-<pid>``
  whose pid is no longer alive, and the processes in them: leftovers of a dead run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

PREFIX = "cv-"
#: ``cv-<host>-<owner pid>``: the names this module makes, and reaps when the pid is dead.
NAME_RE = re.compile(rf"^{PREFIX}[a-z0-9]+-(\d+)$")
SERVICE_ADDRESS = "10.231.0.1"
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here; ``str()`` says why."""


def ip_binary() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )


def _ip(*args: str, timeout: float = 15.0, check: bool = True) -> str:
    binary = ip_binary()
    if binary is None:
        raise NetnsUnavailable("`ip` (iproute2) is not installed")
    result = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise NetnsUnavailable(
            f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def nft_binary() -> str | None:
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft") if os.access(p, os.X_OK)),
        None,
    )


NO_NFT = "`nft` (nftables) is not installed: scripts/install-servers installs it"


def check_firewall() -> None:
    """NetnsUnavailable unless ``nft`` (nftables) is installed, for ``Topology.restrict``."""
    if nft_binary() is None:
        raise NetnsUnavailable(NO_NFT)


def tcp_peers(port: int) -> set[tuple[str, int]]:
    """(address, port) of the peer of every ESTABLISHED IPv4 TCP connection to local
    ``port``, in the calling thread's network namespace (``/proc/thread-self/net/tcp``)."""
    peers = set()
    with open("/proc/thread-self/net/tcp") as f:
        next(f)  # the header
        for line in f:
            local, remote, state = line.split()[1:4]
            if state != "01" or int(local.rsplit(":", 1)[1], 16) != port:  # 01: ESTABLISHED
                continue
            address, peer_port = remote.rsplit(":", 1)
            # The kernel prints the address as a native-endian 32-bit number in hex.
            peers.add((socket.inet_ntoa(struct.pack("=I", int(address, 16))), int(peer_port, 16)))
    return peers


def check_available() -> None:
    """NetnsUnavailable unless this process may make namespaces (root, ``ip`` present)."""
    if sys.platform != "linux":
        raise NetnsUnavailable(f"network namespaces are Linux-only (this is {sys.platform})")
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"making network namespaces needs root (euid {os.geteuid()})")
    if ip_binary() is None:
        raise NetnsUnavailable("`ip` (iproute2) is not installed")


def namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def pids_in(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns``; [] if it is gone."""
    out = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def destroy(names: Sequence[str], timeout: float = 15.0) -> list[str]:
    """SIGKILL every process inside ``names``, then delete them; return what survived
    (an empty list on success). Idempotent: unknown names are skipped."""
    existing = set(namespaces())
    names = [n for n in names if n in existing]
    deadline = time.monotonic() + timeout
    me = os.getpid()  # never this process, even with a thread inside one of them
    while pids := [p for ns in names for p in pids_in(ns) if p != me]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for ns in names:
        _ip("netns", "delete", ns, check=False)
    remaining = set(namespaces())
    return [n for n in names if n in remaining]


def reap_stale() -> list[str]:
    """Delete namespaces ``cv-<host>-<pid>`` whose owner ``pid`` is dead (and the
    processes left in them); return their names."""
    stale = [n for n in namespaces() if (m := NAME_RE.match(n)) and not _alive(int(m[1]))]
    destroy(stale)
    return stale


_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(ns: str) -> Iterator[None]:
    """Run the calling thread in network namespace ``ns`` for the block: its sockets
    and the processes it starts (which inherit it) are on that host. Other threads are
    not affected. Back in the original namespace afterwards, whatever happens."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


@dataclass
class Link:
    """A veth pair: ``hub_dev`` in the hub, ``leaf_dev`` in the leaf, on a /30."""

    leaf: str
    hub_dev: str
    leaf_dev: str
    hub_address: str
    leaf_address: str


@dataclass
class Topology:
    """A hub namespace with leaves on veth links (see the module's docstring)."""

    hub: str
    links: dict[str, Link] = field(default_factory=dict)
    address: str = SERVICE_ADDRESS
    _watchdog: subprocess.Popen[bytes] | None = None
    _created: list[str] = field(default_factory=list)

    @classmethod
    def star(cls, tag: str, leaves: Sequence[str], hub: str = "srv") -> Topology:
        topo = cls(hub=f"{PREFIX}{hub}-{tag}")
        for n, leaf in enumerate(leaves, start=1):
            name = f"{PREFIX}{leaf}-{tag}"
            topo.links[name] = Link(
                leaf=name, hub_dev=f"to-{leaf}"[:15], leaf_dev="uplink",
                hub_address=f"10.231.{n}.1", leaf_address=f"10.231.{n}.2",
            )  # fmt: skip
        return topo

    @property
    def names(self) -> list[str]:
        return [self.hub, *self.links]

    def create(self) -> Self:
        """Make the namespaces and links; NetnsUnavailable (after cleaning up) if it can't."""
        check_available()
        reap_stale()
        self._start_watchdog()
        try:
            for ns in self.names:
                _ip("netns", "add", ns)
                self._created.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.hub, "addr", "add", f"{self.address}/32", "dev", "lo")
            for link in self.links.values():
                _ip(
                    "-n", self.hub, "link", "add", link.hub_dev, "type", "veth",
                    "peer", "name", link.leaf_dev, "netns", link.leaf,
                )  # fmt: skip
                _ip("-n", self.hub, "addr", "add", f"{link.hub_address}/30", "dev", link.hub_dev)
                _ip("-n", link.leaf, "addr", "add", f"{link.leaf_address}/30", "dev", link.leaf_dev)
                _ip("-n", self.hub, "link", "set", link.hub_dev, "up")
                _ip("-n", link.leaf, "link", "set", link.leaf_dev, "up")
                _ip("-n", link.leaf, "route", "add", "default", "via", link.hub_address)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill what runs inside, delete the namespaces. Idempotent."""
        if self._created:
            left = destroy(self._created)
            self._created = left
            if left:
                raise NetnsUnavailable(f"could not delete namespaces {left}")
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            self._watchdog.stdin.close()
            try:
                self._watchdog.wait(20)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- using it

    def exec_prefix(self, ns: str) -> list[str]:
        """Prefix of a command line that runs it in ``ns``."""
        return [ip_binary() or "ip", "netns", "exec", ns]

    def run(self, ns: str, *argv: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.exec_prefix(ns), *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def entered(self, ns: str) -> contextlib.AbstractContextManager[None]:
        return entered(ns)

    def set_link(self, leaf: str, *, up: bool) -> None:
        """Unplug or plug back ``leaf``'s cable, at the hub's end: the hub's veth end goes
        down (the leaf's end loses its carrier, its routes stay) or up again. On the way
        up the leaf's default route is put back too, in case anything flushed it."""
        link = self.links[leaf]
        _ip("-n", self.hub, "link", "set", link.hub_dev, "up" if up else "down")
        if up:
            _ip("-n", leaf, "route", "replace", "default", "via", link.hub_address)

    def restrict(self, ports: Sequence[int]) -> None:
        """From now on the leaves reach only TCP ``ports`` of the hub, as behind a firewall:
        anything else a leaf sends the hub is refused (TCP with a reset, the rest with an
        ICMP "administratively prohibited"). An nftables table in the hub's namespace,
        deleted with it; NetnsUnavailable if ``nft`` is missing or refuses the rules."""
        binary = nft_binary()
        if binary is None:
            raise NetnsUnavailable(NO_NFT)
        devices = ", ".join(f'"{link.hub_dev}"' for link in self.links.values())
        allowed = ", ".join(str(int(p)) for p in ports)
        rules = f"""
table inet conveyor {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname {{ {devices} }} jump from_leaves
    }}
    chain from_leaves {{
        tcp dport {{ {allowed} }} accept
        meta l4proto tcp reject with tcp reset
        reject with icmpx type admin-prohibited
    }}
}}
"""
        result = subprocess.run(
            [*self.exec_prefix(self.hub), str(binary), "-f", "-"],
            input=rules, capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise NetnsUnavailable(f"`nft -f` refused the firewall rules: {result.stderr.strip()}")

    def reaches(self, ns: str, host: str, port: int, timeout: float = 3.0) -> bool:
        """Whether a TCP connection from namespace ``ns`` to ``host:port`` is accepted."""
        with self.entered(ns):
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError:
                return False
        return True

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--watchdog", *self.names],
            stdin=subprocess.PIPE,  # its EOF (our exit, even by SIGKILL) is the signal
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )


def _watchdog_main(names: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns at EOF
    destroy(names, timeout=30)


if __name__ == "__main__" and sys.argv[1:2] == ["--watchdog"]:
    _watchdog_main(sys.argv[2:])
