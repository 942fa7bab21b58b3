"""Process and machine figures from Linux ``/proc`` (psutil is not installed). Best effort:
a process that is gone, or a file that is missing, gives ``None`` rather than an error."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM`` is the peak RSS), in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int | str, *, children: bool = False) -> float | None:
    """utime + stime of a process (all its threads); with ``children``, plus the times of
    the children it has reaped (cutime + cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): utime = 14, stime = 15, cutime = 16, cstime = 17
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def runqueue_wait_seconds(pid: int | str) -> float | None:
    """Time the process's live threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


@dataclass(frozen=True)
class MachineCpu:
    """Seconds of CPU time summed over all CPUs since boot (``/proc/stat``)."""

    busy: float  # user + nice + system + irq + softirq
    idle: float  # idle + iowait
    steal: float  # taken by the hypervisor for other guests

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy - other.busy, self.idle - other.idle, self.steal - other.steal)


def machine_cpu() -> MachineCpu | None:
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    except (OSError, ValueError):
        return None
    return MachineCpu(
        (user + nice + system + irq + softirq) / CLK_TCK, (idle + iowait) / CLK_TCK, steal / CLK_TCK
    )


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []
