"""The SLO arithmetic: per-phase figures, the knee and the verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd

from loadtests.locust.report import Slo, find_knee, phase_result, summarise, to_markdown
from loadtests.locust.shapes import step


def _samples(t0: float, phases: list[tuple[float, float, float, int, int]]) -> pd.DataFrame:
    """Requests spread evenly over each (start, end, latency_ms, count, failed) window."""
    rows = []
    for start, end, latency, count, failed in phases:
        for i, t in enumerate(np.linspace(start, end, count, endpoint=False)):
            ok = i < count - failed  # the failures come last
            rows.append({"t_start": t0 + t, "latency_ms": latency + (i % 10) * 0.1,
                         "status": 200 if ok else 429, "ok": ok, "rows": 100,
                         "shed": not ok})
    return pd.DataFrame(rows)


def test_knee_is_last_step_of_the_unbroken_run_within_budget() -> None:
    schedule = step(10, 10, step_s=10, max_rate=40)
    t0 = 1000.0
    samples = _samples(t0, [(0, 10, 8.0, 100, 0), (10, 20, 12.0, 200, 0),
                            (20, 30, 80.0, 300, 0), (30, 40, 9.0, 400, 0)])
    summary = summarise(samples, schedule, t0, Slo(budget_ms=50), run={})
    met = [p["meets_slo"] for p in summary["phases"]]
    assert met == [True, True, False, True]
    assert summary["knee"]["offered_rps"] == 20  # the later good step does not count
    assert summary["verdict"]["pass"]
    assert "knee at 20 req/s" in to_markdown(summary, [])
    assert [(g["candidates"], g["requests"]) for g in summary["by_size"]] == [("0-199", 1000)]


def test_errors_above_the_allowed_rate_miss_the_slo_even_when_fast() -> None:
    schedule = step(10, 10, step_s=10, max_rate=10)
    samples = _samples(0.0, [(0, 10, 5.0, 100, 5)]).assign(t=lambda f: f["t_start"])
    result = phase_result(samples, schedule.phases[0], 10, Slo(budget_ms=50,
                                                                max_error_rate=0.01))
    assert not result.meets_slo
    assert result.shed_rate > 0
    assert find_knee([result]) is None


def test_settle_window_is_left_out_of_each_phase() -> None:
    schedule = step(10, 10, step_s=10, max_rate=10)
    slow_start = _samples(0.0, [(0, 0.5, 500.0, 5, 0), (1, 10, 5.0, 90, 0)])
    result = phase_result(slow_start.assign(t=slow_start["t_start"]), schedule.phases[0], 10,
                          Slo(budget_ms=50, settle_s=1.0))
    assert result.requests == 90
    assert result.p99_ms is not None
    assert result.p99_ms < 50
