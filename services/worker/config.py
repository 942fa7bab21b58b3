"""The paired worker's saved config: ``worker.json`` in the user's config folder.

It holds ``{server, worker_id, token, name}`` so that a lender types the pairing code once.
The token is a secret: the file is created with mode 0600 before anything is written to it,
written whole to a temporary name and renamed into place, so it is never partly written
nor readable by other users. ``CONVEYOR_CONFIG_DIR`` overrides the folder (tests use it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

FILE_NAME = "worker.json"
ENV_DIR = "CONVEYOR_CONFIG_DIR"


class ConfigError(ValueError):
    """The saved config cannot be read or written; ``str()`` is one line."""


@dataclass(frozen=True)
class SavedWorker:
    server: str
    worker_id: str
    token: str
    name: str


def path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the config lives: ``$CONVEYOR_CONFIG_DIR/worker.json``, else the platform's."""
    env = os.environ if environ is None else environ
    folder = env.get(ENV_DIR, "").strip() or platformdirs.user_config_dir("conveyor")
    return Path(folder) / FILE_NAME


def load(file: Path) -> SavedWorker | None:
    """The saved worker, or None if there is none; ConfigError if it is unreadable."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return SavedWorker(**{k: str(data[k]) for k in ("server", "worker_id", "token", "name")})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{file}: cannot read the saved pairing ({type(exc).__name__}); "
            "run with --forget to delete it"
        ) from None


def save(file: Path, saved: SavedWorker) -> None:
    """Write atomically, readable by its owner only (0600 from creation)."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a crash: O_EXCL below must create the file itself
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if hasattr(os, "fchmod"):  # exactly 0600: the umask may have narrowed it
                os.fchmod(out.fileno(), 0o600)
            json.dump(asdict(saved), out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, file)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"{file}: cannot save the pairing: {exc.strerror or exc}") from None


def forget(file: Path) -> bool:
    """Delete the saved config; True if there was one."""
    try:
        file.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"{file}: cannot delete it: {exc.strerror or exc}") from None
    return True
