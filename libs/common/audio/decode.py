"""Decoding any audio file to mono float32 samples with ffmpeg.

Every format (wav, mp3, ogg/vorbis, opus, webm, m4a, ...) goes through the same ffmpeg
binary: the same decoders, the same downmix and the same resampler, so that one recording
in two encodings yields nearly the same samples, and so the same feature vector. No
``librosa.load`` or audioread: ffmpeg runs as a child process writing raw little-endian
float32 to its stdout, and the process is killed when it runs out of time.

The input is always opened as a local file (``file:`` prefix, only the ``file`` protocol
allowed), so a path or a crafted playlist cannot make ffmpeg open a URL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

DEFAULT_TIMEOUT = 300.0
_NO_STREAM = ("does not contain any stream", "matches no streams", "no audio")
_LOG_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")
_ERROR_PREFIX = re.compile(r"^Error [^:]*: ")


class DecodeError(Exception):
    """A file that ffmpeg cannot turn into audio; ``str(exc)`` is a one-line reason."""


def find_ffmpeg(configured: str | None = None) -> str | None:
    """The ffmpeg to use: ``configured`` (a path or a command name) when given, else the one
    on ``PATH``, else the static binary of imageio-ffmpeg; None when there is none.

    A ``configured`` value that is not an executable raises ``ValueError``: a wrong setting
    must not silently fall back to another binary.
    """
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise ValueError(f"ffmpeg not found or not executable: {configured}")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        return on_path
    try:
        import imageio_ffmpeg

        bundled = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # imageio-ffmpeg raises RuntimeError, or is not installed at all
        return None
    return bundled if bundled and os.access(bundled, os.X_OK) else None


def ffmpeg_command(
    path: str | os.PathLike[str], ffmpeg: str, sample_rate: int, max_seconds: float | None
) -> list[str]:
    """The argv that decodes ``path`` to mono float32 at ``sample_rate`` on stdout."""
    source = "file:" + str(Path(path).absolute())
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
            "-protocol_whitelist", "file", "-i", source,
            "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(sample_rate)]  # fmt: skip
    if max_seconds is not None:
        argv += ["-t", f"{max_seconds:.6f}"]
    return [*argv, "-f", "f32le", "-"]


def decode(
    path: str | os.PathLike[str],
    *,
    ffmpeg: str,
    sample_rate: int = 22050,
    max_seconds: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> np.ndarray:
    """The audio of ``path`` as a 1-D float32 array at ``sample_rate``, downmixed to mono,
    at most ``max_seconds`` long. Raises DecodeError when ffmpeg fails, finds no audio, or
    takes longer than ``timeout`` seconds (the process is killed then).
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    argv = ffmpeg_command(path, ffmpeg, sample_rate, max_seconds)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise DecodeError(f"cannot run ffmpeg: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DecodeError(f"decoding took longer than {timeout:g} s") from None
    finally:
        if proc.poll() is None:  # an exception other than the timeout, e.g. MemoryError
            proc.kill()
            proc.wait()
    stderr = err.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise DecodeError(_reason(stderr, str(path)))
    samples = np.frombuffer(out, dtype="<f4")
    if samples.size == 0:
        raise DecodeError("no audio in the file")
    return samples.astype(np.float32)  # a writable, native-order copy


def _reason(stderr: str, path: str) -> str:
    """A one-line reason from ffmpeg's stderr: its last error line, without the log prefix
    and without the file's path."""
    if any(marker in stderr for marker in _NO_STREAM):
        return "no audio in the file"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "ffmpeg failed without saying why"
    line = _LOG_PREFIX.sub("", lines[-1])
    line = _ERROR_PREFIX.sub("", line)
    absolute = str(Path(path).absolute())  # not ``path``: a short name could be any word
    line = line.replace("file:" + absolute, "the file").replace(absolute, "the file")
    return f"ffmpeg cannot decode this file: {line}"
