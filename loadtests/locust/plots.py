"""PNG plots of a run: latency against offered load (step, constant) or over time (spike),
throughput over time, gateway internals.

Rendered with matplotlib's Agg backend (no display needed), one function per figure, each
returning the file name it wrote so the summary can list them. Conventions: latency axes
start at 0; the budget is a red dashed line on every latency axis; error-rate axes are
scaled to the allowed error rate (the SLO line), not to 100 %; phase boundaries are drawn
and named; latency over time is a rolling window, not a per-second percentile of a handful
of samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from loadtests.locust.shapes import Schedule

ROLLING_S = 5
"""Width of the rolling window (seconds) for latency percentiles over time."""
MIN_SAMPLES = 20
"""Fewest successful requests in a window for a p99 to be drawn at all."""


def latency_vs_load(folder: Path, summary: dict[str, Any]) -> str:
    """p50/p95/p99 of each phase against its offered rate, with the budget and the knee."""
    phases = pd.DataFrame(summary["phases"]).sort_values("offered_rps", kind="stable")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for column, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        ax.plot(phases["offered_rps"], phases[column], style, label=column[:3])
    ax.axhline(summary["slo"]["budget_ms"], color="red", linestyle="--", label="budget")
    knee = summary.get("knee")
    if knee:
        ax.axvline(knee["offered_rps"], color="grey", linestyle=":",
                   label=f"knee {knee['offered_rps']:g} req/s")
    ax.set(xlabel="offered load (requests/s)", ylabel="latency of successful requests (ms)",
           title=f"Latency against offered load ({summary['schedule']['shape']} shape)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    errors = ax.twinx()
    errors.bar(phases["offered_rps"], phases["error_rate"] * 100, alpha=0.2, color="red",
               width=_bar_width(phases["offered_rps"]), label="errors")
    _error_axis(errors, phases["error_rate"], summary["slo"]["max_error_rate"])
    errors.legend(loc="upper right")
    ax.set_zorder(errors.get_zorder() + 1)  # lines over the bars
    ax.patch.set_visible(False)
    return _save(fig, folder, "latency_vs_load.png")


def _error_axis(ax: Any, rates: pd.Series, allowed: float) -> None:
    """Failed-request % scaled to the allowed rate (3x it, or the worst value seen), with the
    SLO line: on a 0-100 % axis a 1 % SLO and a 2 % miss look the same."""
    top = max(3 * allowed, float(rates.max()) * 1.1 if len(rates) else 0.0) * 100
    ax.axhline(allowed * 100, color="darkred", linestyle=":", label=f"SLO {allowed:.1%}")
    ax.set(ylabel="failed requests (%)", ylim=(0, top or 1.0))


def _phase_marks(ax: Any, schedule: Schedule, label: bool) -> None:
    """A vertical line at each phase start, named at the top of the axis when ``label``."""
    for phase in schedule.phases:
        ax.axvline(phase.start_s, color="grey", linewidth=0.8, alpha=0.6)
        if label:
            ax.annotate(f"{phase.name} {schedule.offered_rate(phase):g}/s",
                        (phase.start_s, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -10), textcoords="offset points", fontsize=7,
                        color="dimgrey", rotation=90, va="top")


def rolling_latency(samples: pd.DataFrame, t0: float, seconds: np.ndarray
                    ) -> pd.DataFrame:
    """p50/p99 of successful requests over the trailing ``ROLLING_S`` seconds, per second;
    NaN where the window holds fewer than ``MIN_SAMPLES`` (a p99 of 5 samples is noise)."""
    ok = samples[samples["ok"]]
    t = (ok["t_start"] - t0).to_numpy()
    latency = ok["latency_ms"].to_numpy()
    order = np.argsort(t)
    t, latency = t[order], latency[order]
    rows = []
    for second in seconds:
        lo, hi = np.searchsorted(t, [second + 1 - ROLLING_S, second + 1])
        window = latency[lo:hi]
        if len(window) >= MIN_SAMPLES:
            p50, p99 = np.percentile(window, [50, 99])
        else:
            p50 = p99 = np.nan
        rows.append((second + 1, p50, p99))
    return pd.DataFrame(rows, columns=["t", "p50_ms", "p99_ms"])


def latency_over_time(folder: Path, samples: pd.DataFrame, schedule: Schedule, t0: float,
                      summary: dict[str, Any]) -> str:
    """Rolling p50/p99 and the failure rate over time, with the budget and the phases: for a
    spike, whether latency and errors come back after the burst (recovery)."""
    seconds = np.arange(int(np.ceil(schedule.total_s)))
    rolled = rolling_latency(samples, t0, seconds)
    second = np.floor(samples["t_start"] - t0).astype(int)
    frame = samples.assign(second=second)
    sent = frame.groupby("second").size().reindex(seconds, fill_value=0)
    failed = frame[~frame["ok"]].groupby("second").size().reindex(seconds, fill_value=0)
    rate = (failed / sent.where(sent > 0)).fillna(0.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    top.plot(rolled["t"], rolled["p50_ms"], label=f"p50 (rolling {ROLLING_S} s)")
    top.plot(rolled["t"], rolled["p99_ms"], label=f"p99 (rolling {ROLLING_S} s)")
    top.axhline(summary["slo"]["budget_ms"], color="red", linestyle="--", label="budget")
    top.set(ylabel="latency of successful requests (ms)",
            title=f"Latency over time ({summary['schedule']['shape']} shape)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper right", fontsize=8)
    bottom.plot(seconds + 1, rate.to_numpy() * 100, drawstyle="steps-pre", color="red",
                label="failed requests")
    _error_axis(bottom, rate, summary["slo"]["max_error_rate"])
    bottom.set(xlabel="seconds since start")
    bottom.legend(loc="upper right", fontsize=8)
    for ax, label in ((top, True), (bottom, False)):
        _phase_marks(ax, schedule, label)
        ax.grid(alpha=0.3)
    return _save(fig, folder, "latency_over_time.png")


def _bar_width(x: pd.Series) -> float:
    gaps = np.diff(np.unique(x.to_numpy()))
    return float(gaps.min() * 0.5) if len(gaps) else 1.0


def throughput_over_time(folder: Path, samples: pd.DataFrame, schedule: Schedule,
                         t0: float, summary: dict[str, Any] | None = None) -> str:
    """Per second: offered and achieved requests, failures, candidate rows; rolling p50/p99
    against the budget."""
    t = samples["t_start"] - t0
    second = np.floor(t).astype(int)
    frame = samples.assign(second=second)
    ok = frame[frame["ok"]]
    seconds = np.arange(int(np.ceil(schedule.total_s)) + 1)
    achieved = frame.groupby("second").size().reindex(seconds, fill_value=0)
    failed = frame[~frame["ok"]].groupby("second").size().reindex(seconds, fill_value=0)
    rows = ok.groupby("second")["rows"].sum().reindex(seconds, fill_value=0)
    rolled = rolling_latency(samples, t0, seconds)
    offered = [schedule.offered_rate(p) if (p := schedule.phase_at(s + 0.5)) else 0.0
               for s in seconds]

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    top.step(seconds, offered, where="post", color="grey", linestyle="--", label="offered")
    top.plot(seconds, achieved.to_numpy(), drawstyle="steps-post", label="sent")
    top.plot(seconds, failed.to_numpy(), drawstyle="steps-post", color="red", label="failed")
    top.set(ylabel="requests/s (per second)", title="Throughput over time")
    top.set_ylim(bottom=0)
    top.legend(fontsize=8)
    middle.plot(seconds, rows.to_numpy(), drawstyle="steps-post", color="green")
    middle.set(ylabel="candidate rows/s (ok)")
    bottom.plot(rolled["t"], rolled["p50_ms"], label=f"p50 (rolling {ROLLING_S} s)")
    bottom.plot(rolled["t"], rolled["p99_ms"], label=f"p99 (rolling {ROLLING_S} s)")
    if summary is not None:
        bottom.axhline(summary["slo"]["budget_ms"], color="red", linestyle="--",
                       label="budget")
    bottom.set(xlabel="seconds since start", ylabel="latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.legend(fontsize=8)
    middle.set_ylim(bottom=0)
    for ax in (top, middle, bottom):
        _phase_marks(ax, schedule, label=ax is top)
        ax.grid(alpha=0.3)
    return _save(fig, folder, "throughput_over_time.png")


def gateway_metrics(folder: Path, gateway: pd.DataFrame, t0: float) -> str:
    """Mean rows per batch per scrape interval, queue depth and in-flight batches."""
    t = gateway["t"] - t0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if {"batch_rows_sum", "batches"} <= set(gateway.columns):
        batches = gateway["batches"].diff()
        mean_rows = gateway["batch_rows_sum"].diff() / batches.where(batches > 0)
        top.plot(t, mean_rows, marker=".", label="mean rows per batch")
    top.set(ylabel="rows per batch", title="Gateway batching (scraped from /metrics)")
    if "queue_rows" in gateway.columns:
        bottom.plot(t, gateway["queue_rows"], label="queue depth (rows)")
    if "inflight_batches" in gateway.columns:
        twin = bottom.twinx()
        twin.step(t, gateway["inflight_batches"], where="post", color="orange",
                  label="in-flight batches")
        twin.set_ylabel("in-flight batches")
        twin.legend(loc="upper right")
    bottom.set(xlabel="seconds since start", ylabel="queued rows")
    bottom.legend(loc="upper left")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _save(fig, folder, "gateway_metrics.png")


def _save(fig: Any, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=100)
    plt.close(fig)
    return name
