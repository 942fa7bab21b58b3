"""The worker's scratch folder: one sub-folder per worker process, swept of dead ones.

Downloads land in ``<WORK_DIR>/<pid>-<worker id>/``. A worker killed with SIGKILL cannot
clean up after itself, so each worker, as it starts, removes the folders of processes that
no longer run. Folders of live workers on the same host are left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def base(configured: str | None) -> Path:
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "conveyor-work"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep(root: Path) -> int:
    """Remove the folders of workers that are gone; return how many."""
    removed = 0
    if not root.is_dir():
        return 0
    for entry in root.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if not entry.is_dir() or not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        if not _alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    if removed:
        log.info(
            "removed %d scratch folders left by workers that died", removed,
            extra={"action": "scratch_swept"},
        )  # fmt: skip
    return removed


def claim(root: Path, worker_id: str) -> Path:
    """Sweep, then make this process's own folder."""
    sweep(root)
    folder = root / f"{os.getpid()}-{worker_id}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
