"""Unit tests for ``jobs.progress``: in-memory Job objects, no database."""

from __future__ import annotations

import pytest

from libs.common.jobs import Progress, progress
from libs.common.models import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Job

T0 = 1_700_000_000.0


def make_job(
    state: str,
    *,
    total: int = 0,
    done: int = 0,
    failed: int = 0,
    filtered: int = 0,
    started: float | None = None,
    finished: float | None = None,
    fanout_done: bool = True,
) -> Job:
    return Job(
        id="j" * 32,
        kind="csv",
        state=state,
        rows_total=total,
        rows_done=done,
        rows_failed=failed,
        rows_filtered=filtered,
        started_at=started,
        finished_at=finished,
        fanout_done=fanout_done,
        created_at=T0 - 5,
    )


def test_queued_job_is_at_zero() -> None:
    p = progress(make_job(QUEUED, fanout_done=False), at=T0)
    assert p == Progress(rows_processed=0, rows_per_second=None, eta_seconds=None, percent=0.0)


def test_queued_job_with_known_total_is_still_zero() -> None:
    p = progress(make_job(QUEUED, total=100, fanout_done=True), at=T0)
    assert p.percent == 0.0
    assert p.eta_seconds is None


def test_running_half_done() -> None:
    job = make_job(RUNNING, total=1000, done=400, failed=50, filtered=50, started=T0)
    p = progress(job, at=T0 + 10)
    assert p.rows_processed == 500
    assert p.percent == 50.0
    assert p.rows_per_second == pytest.approx(50.0)
    assert p.eta_seconds == pytest.approx(500 / 50.0)


@pytest.mark.parametrize(
    ("done", "total", "seconds", "percent", "eta"),
    [
        (1, 3, 1.0, 33.33, 2.0),
        (250, 1000, 5.0, 25.0, 15.0),
        (999, 1000, 999.0, 99.9, 1.0),
        (1000, 1000, 20.0, 100.0, 0.0),
    ],
)
def test_running_table(done: int, total: int, seconds: float, percent: float, eta: float) -> None:
    p = progress(make_job(RUNNING, total=total, done=done, started=T0), at=T0 + seconds)
    assert p.percent == percent
    assert p.rows_per_second == pytest.approx(done / seconds)
    assert p.eta_seconds == pytest.approx(eta)


def test_running_not_fanned_out_caps_at_99_and_has_no_eta() -> None:
    job = make_job(RUNNING, total=200, done=200, started=T0, fanout_done=False)
    p = progress(job, at=T0 + 4)
    assert p.percent == 99.0
    assert p.eta_seconds is None
    assert p.rows_per_second == pytest.approx(50.0)


def test_running_not_fanned_out_below_the_cap_is_exact() -> None:
    job = make_job(RUNNING, total=200, done=50, started=T0, fanout_done=False)
    assert progress(job, at=T0 + 1).percent == 25.0


def test_running_with_nothing_processed_has_no_rate() -> None:
    p = progress(make_job(RUNNING, total=100, started=T0), at=T0 + 30)
    assert p == Progress(0, None, None, 0.0)


def test_running_with_no_elapsed_time_has_no_rate() -> None:
    p = progress(make_job(RUNNING, total=100, done=10, started=T0), at=T0)
    assert p.rows_per_second is None
    assert p.eta_seconds is None
    assert p.percent == 10.0


def test_running_not_started_has_no_rate() -> None:
    p = progress(make_job(RUNNING, total=100, done=10, started=None), at=T0)
    assert p.rows_per_second is None
    assert p.eta_seconds is None


def test_completed_is_100_percent_without_eta_and_rate_uses_finish_time() -> None:
    job = make_job(COMPLETED, total=600, done=500, failed=100, started=T0, finished=T0 + 12)
    p = progress(job, at=T0 + 1_000)  # long after: the rate must not decay
    assert p.percent == 100.0
    assert p.eta_seconds is None
    assert p.rows_processed == 600
    assert p.rows_per_second == pytest.approx(50.0)


def test_completed_empty_job_is_100_percent() -> None:
    p = progress(make_job(COMPLETED, total=0, started=T0, finished=T0 + 1), at=T0 + 2)
    assert p.percent == 100.0
    assert p.rows_per_second is None
    assert p.eta_seconds is None


@pytest.mark.parametrize("state", [FAILED, CANCELLED])
def test_stopped_jobs_report_the_fraction_without_eta(state: str) -> None:
    job = make_job(state, total=400, done=100, started=T0, finished=T0 + 10, fanout_done=False)
    p = progress(job, at=T0 + 50)
    assert p.percent == 25.0  # no 99% cap outside RUNNING
    assert p.eta_seconds is None
    assert p.rows_per_second == pytest.approx(10.0)


def test_percent_never_exceeds_100() -> None:
    job = make_job(RUNNING, total=10, done=15, started=T0)
    p = progress(job, at=T0 + 1)
    assert p.percent == 100.0
    assert p.eta_seconds == 0.0


def test_percent_is_rounded_to_two_decimals() -> None:
    p = progress(make_job(RUNNING, total=3, done=2, started=T0), at=T0 + 1)
    assert p.percent == 66.67
