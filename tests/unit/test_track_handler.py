"""The track handler's own decisions, without audio work: what a lent worker refuses."""

from __future__ import annotations

from pathlib import Path

from libs.common import messages
from services.worker.tracks import AudioConfig, handle_tracks


def test_a_lent_worker_refuses_files_on_its_own_disk(tmp_path: Path) -> None:
    secret = tmp_path / "private.wav"
    secret.write_bytes(b"RIFF")
    task = messages.TrackTask(
        "j-00000000", 0, [messages.TrackRef(7, 1, "", "private.wav", secret.as_uri())]
    )
    stages: list[str] = []
    config = AudioConfig(ffmpeg="ffmpeg", scratch=tmp_path / "scratch", local_files=False)
    result = handle_tracks(
        task, config, worker="w", progress=lambda _t, _i, stage: stages.append(stage)
    )
    assert (result.rows_in, result.rows_out, result.rows_failed) == (1, 0, 1)
    assert result.tracks[0].error == "a lent worker does not read files on its own disk"
    assert result.errors[0].reason.startswith("private.wav: a lent worker")
    assert stages == [], "nothing was read"
