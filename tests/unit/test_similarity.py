"""Nearest neighbours by dot product, and the worker's scratch-folder sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from libs.common.similarity import top_k
from services.worker import scratch


def test_top_k_is_best_first_excludes_the_query_and_breaks_ties_by_id() -> None:
    matrix = np.array([[1, 0], [0.6, 0.8], [0.8, 0.6], [0.8, 0.6], [0, 1]], dtype=np.float32)
    ids = np.array([10, 20, 30, 5, 40])
    found = top_k(matrix, ids, matrix[0], 3, exclude=0)
    assert [i for i, _ in found] == [5, 30, 20]
    assert found[0][1] == found[1][1] == np.float32(0.8)
    assert [i for i, _ in top_k(matrix, ids, matrix[0], 99, exclude=0)] == [5, 30, 20, 40]
    assert top_k(matrix[:1], ids[:1], matrix[0], 5, exclude=0) == []


def test_top_k_matches_a_full_sort_on_random_vectors() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(2000, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(2000) + 1
    found = top_k(matrix, ids, matrix[17], 10, exclude=17)
    scores = matrix @ matrix[17]
    scores[17] = -np.inf
    assert [i for i, _ in found] == [int(ids[j]) for j in np.argsort(-scores, kind="stable")[:10]]


def test_sweep_removes_only_the_folders_of_dead_processes(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_folder = tmp_path / f"{dead.stdout.strip()}-w1"
    (dead_folder / "track-x").mkdir(parents=True)
    (dead_folder / "track-x" / "song.webm.part").write_bytes(b"partial")
    live_folder = tmp_path / f"{os.getppid()}-w2"
    live_folder.mkdir()
    other = tmp_path / "not-a-worker"
    other.mkdir()
    assert scratch.sweep(tmp_path) == 1
    assert not dead_folder.exists()
    assert live_folder.exists() and other.exists()
    own = scratch.claim(tmp_path, "w3")
    assert own.is_dir() and own.name == f"{os.getpid()}-w3"
    assert scratch.sweep(tmp_path) == 0, "its own folder is never swept"
