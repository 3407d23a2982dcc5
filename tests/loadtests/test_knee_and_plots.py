"""A knee is named only where the ramp found one; the default ramp reaches past the machine's
capacity; the plots draw what the question needs (spike: recovery over time) and a p99
over too few samples is not drawn."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from loadtests.locust import plots
from loadtests.locust.report import Slo, summarise, to_markdown
from loadtests.locust.run import make_schedule, parse_args, progress_line
from loadtests.locust.shapes import spike, step
from tests.loadtests.test_report import _samples


def test_no_knee_is_called_when_every_step_meets_the_slo() -> None:
    schedule = step(10, 10, step_s=10, max_rate=30)
    samples = _samples(0.0, [(0, 10, 8.0, 100, 0), (10, 20, 9.0, 200, 0),
                             (20, 30, 10.0, 300, 0)])
    summary = summarise(samples, schedule, 0.0, Slo(budget_ms=50), run={})
    assert summary["knee"] is None
    assert summary["verdict"]["reasons"] == [
        "no knee found: every step up to 30 req/s offered met the SLO; ramp higher "
        "(--max-rate, --step-factor, --duration) to find it"]
    assert "**Knee:** none found; no knee found" in to_markdown(summary, [])


def test_the_default_ramp_reaches_past_capacity_in_a_minute() -> None:
    schedule = make_schedule(parse_args([]))
    rates = [schedule.offered_rate(p) for p in schedule.phases]
    assert schedule.load_s <= 60
    assert rates[0] == 5
    assert rates[-1] > 160  # the embedded gateway's capacity on the 2-core machine
    assert all(b > a for a, b in itertools.pairwise(rates))
    additive = make_schedule(parse_args(["--step-factor", "0", "--step-rate", "10"]))
    assert [p.rate for p in additive.phases][:3] == [5, 15, 25]


def test_progress_lines_say_which_counts_are_cumulative() -> None:
    schedule = step(10, 10, step_s=10, max_rate=20)
    line = progress_line(12.0, schedule, {"Total Request Count": "340",
                                          "Total Failure Count": "2", "50%": "9",
                                          "99%": "31"}, {"queue_rows": 0, "shed_total": 4})
    assert "since start: 340 requests, 2 failed | last 10 s: p50 9 ms, p99 31 ms" in line
    assert "4 shed since start" in line


def test_rolling_p99_needs_enough_samples() -> None:
    t = np.arange(0, 10, 0.1)  # 10 requests a second
    samples = pd.DataFrame({"t_start": t, "latency_ms": np.where(t < 5, 10.0, 40.0),
                            "ok": True})
    rolled = plots.rolling_latency(samples, 0.0, np.arange(10))
    assert rolled["p99_ms"].iloc[:1].isna().all()  # 10 samples in the first window: too few
    assert rolled.loc[rolled["t"] == 5, "p99_ms"].item() == 10.0
    assert rolled.loc[rolled["t"] == 10, "p99_ms"].item() == 40.0


def _spike_run() -> tuple[pd.DataFrame, object, dict[str, object]]:
    schedule = spike(10, 60, duration_s=30, spike_at_s=10, spike_s=5)
    rng = np.random.default_rng(0)
    rows = []
    for phase in schedule.phases:
        count = int(phase.rate * phase.duration_s)
        for t in np.sort(rng.uniform(phase.start_s, phase.end_s, count)):
            late = phase.name == "spike" or (phase.name == "recovery" and t < 18)
            ok = not (late and rng.random() < 0.3)
            rows.append({"t_start": t, "latency_ms": rng.gamma(4, 20 if late else 3),
                         "status": 200 if ok else 429, "ok": ok, "rows": 300,
                         "shed": not ok})
    samples = pd.DataFrame(rows)
    return samples, schedule, summarise(samples, schedule, 0.0, Slo(budget_ms=50), run={})


def test_spike_plots_render_latency_over_time(tmp_path: Path) -> None:
    samples, schedule, summary = _spike_run()
    names = [plots.latency_over_time(tmp_path, samples, schedule, 0.0, summary),
             plots.throughput_over_time(tmp_path, samples, schedule, 0.0, summary)]
    assert names == ["latency_over_time.png", "throughput_over_time.png"]
    for name in names:
        with Image.open(tmp_path / name) as image:
            assert image.size[0] >= 700
