"""The worker's terminal: a live rich panel, or plain lines when stdout is not a terminal.

``Display`` runs in a daemon thread and only reads the worker (through ``status.Sampler``).
It can never stop the worker: any error in it is logged once and the display ends. In the
live panel, log lines (stderr) are printed above the panel instead of through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from services.worker.status import Sampler, Snapshot

log = logging.getLogger(__name__)

REFRESH_SECONDS = 0.5
SUMMARY_SECONDS = 10.0
_STATE_STYLE = {
    "connected": "green", "reconnecting": "red", "stopping": "yellow", "stopped": "dim"
}  # fmt: skip


def clock_text(seconds: float) -> str:
    whole = int(max(0.0, seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def state_line(s: Snapshot) -> str:
    """One plain line for a change of connection state."""
    where = f"{s.broker}, pool {s.pool}"
    if s.state == "connected":
        return f"worker {s.name}: connected to {where}"
    if s.state == "reconnecting":
        return f"worker {s.name}: reconnecting to {where}: {s.error}"
    if s.state == "stopping":
        return f"worker {s.name}: stopping: finishing {len(s.tasks)} tasks in flight"
    if s.state == "stopped":
        return f"worker {s.name}: stopped"
    return f"worker {s.name}: connecting to {where}"


def summary_line(s: Snapshot) -> str:
    """The plain periodic summary: counts, speed, what is running, uptime."""
    working = f"job {', '.join(s.jobs)}, task {', '.join(s.tasks)}" if s.tasks else "idle"
    return (
        f"worker {s.name}: {s.done} done, {s.failed} failed, {s.rate:.1f} {s.rate_unit}, "
        f"{working}, up {clock_text(s.uptime)}"
    )


class PlainLines:
    """Which plain lines a snapshot calls for: state changes at once, a summary now and then."""

    def __init__(self, every: float = SUMMARY_SECONDS) -> None:
        self.every = every
        self._state: tuple[str, str | None] | None = None
        self._last_summary: float | None = None

    def lines(self, s: Snapshot, now: float) -> list[str]:
        out = []
        if (s.state, s.error) != self._state:
            self._state = (s.state, s.error)
            out.append(state_line(s))
        if self._last_summary is None:
            self._last_summary = now
        elif now - self._last_summary >= self.every:
            self._last_summary = now
            out.append(summary_line(s))
        return out


def panel(s: Snapshot) -> Panel:
    """The live panel for one snapshot (Text throughout: no markup from messages)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("broker", Text(f"{s.broker}  (pool {s.pool})"))
    state = Text("● " + s.state, style=_STATE_STYLE.get(s.state, "cyan"))
    if s.error:
        state.append(f"  {s.error}", style="dim")
    grid.add_row("state", state)
    if s.tasks:
        grid.add_row("job", Text(", ".join(s.jobs)))
        grid.add_row("task", Group(*(Text(t) for t in s.tasks)))
    else:
        grid.add_row("task", Text("waiting for work", style="dim"))
    grid.add_row("speed", Text(f"{s.rate:.1f} {s.rate_unit}"))
    done = Text(f"{s.done} done   ")
    done.append(f"{s.failed} failed", style="red" if s.failed else "")
    grid.add_row("tasks", done)
    grid.add_row("uptime", Text(clock_text(s.uptime)))
    return Panel(grid, title=Text(f"Conveyor worker {s.name}"), expand=False)


class Display:
    """Shows a worker's progress until ``stop()``; ``mode`` is ``live`` or ``plain``."""

    def __init__(self, worker: Any, mode: str, out: TextIO | None = None) -> None:
        self.mode = mode
        self.out = out or sys.stdout
        self.sampler = Sampler(worker)
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-display", daemon=True)

    @classmethod
    def choose(cls, worker: Any, *, plain: bool, quiet: bool) -> Display | None:
        """None with ``--quiet``; plain lines with ``--plain`` or when stdout is no terminal."""
        if quiet:
            return None
        live = not plain and sys.stdout.isatty()
        return cls(worker, "live" if live else "plain")

    def start(self) -> None:
        logging.getLogger("libs.common.consuming").addHandler(self.sampler.watch)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """After the worker returned: show the final state, end the thread."""
        self.sampler.stopped = True
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        logging.getLogger("libs.common.consuming").removeHandler(self.sampler.watch)

    def abort(self) -> None:
        """From a signal handler before ``os._exit``: give the cursor back, take no locks."""
        if self.mode == "live":
            with contextlib.suppress(Exception):
                os.write(self.out.fileno(), b"\x1b[?25h\n")

    def _run(self) -> None:
        try:
            self._live() if self.mode == "live" else self._plain()
        except Exception:
            log.exception("the progress display stopped (the worker carries on)")

    def _plain(self) -> None:
        lines = PlainLines()
        while True:
            stopped = self.stop_event.is_set()
            snapshot = self.sampler.snapshot()
            found = lines.lines(snapshot, snapshot.uptime)
            for line in [*found, summary_line(snapshot)] if stopped else found:
                print(line, file=self.out, flush=True)
            if stopped:
                return
            self.stop_event.wait(REFRESH_SECONDS)

    def _live(self) -> None:
        console = Console(file=self.out)
        stderr = sys.stderr
        with Live(console=console, auto_refresh=False, redirect_stderr=True) as live:
            moved = _move_logs(stderr, sys.stderr)  # Live's proxy: log lines above the panel
            try:
                while True:
                    live.update(panel(self.sampler.snapshot()), refresh=True)
                    if self.stop_event.wait(REFRESH_SECONDS):
                        live.update(panel(self.sampler.snapshot()), refresh=True)
                        return
            finally:
                for handler in moved:
                    handler.setStream(stderr)


def _move_logs(old: TextIO, new: TextIO) -> list[logging.StreamHandler[TextIO]]:
    """Point the root logger's handlers that write to ``old`` at ``new``; return them."""
    moved = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is old and new is not old
    ]
    for handler in moved:
        handler.setStream(new)
    return moved
