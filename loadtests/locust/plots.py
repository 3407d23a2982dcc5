"""PNG plots of a run: latency against offered load, throughput over time, gateway internals.

Rendered with matplotlib's Agg backend (no display needed), one function per figure, each
returning the file name it wrote so the summary can list them.
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
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    errors = ax.twinx()
    errors.bar(phases["offered_rps"], phases["error_rate"] * 100, alpha=0.2, color="red",
               width=_bar_width(phases["offered_rps"]), label="errors")
    errors.set(ylabel="failed requests (%)", ylim=(0, 100))
    errors.legend(loc="upper right")
    ax.set_zorder(errors.get_zorder() + 1)  # lines over the bars
    ax.patch.set_visible(False)
    return _save(fig, folder, "latency_vs_load.png")


def _bar_width(x: pd.Series) -> float:
    gaps = np.diff(np.unique(x.to_numpy()))
    return float(gaps.min() * 0.5) if len(gaps) else 1.0


def throughput_over_time(folder: Path, samples: pd.DataFrame, schedule: Schedule,
                         t0: float) -> str:
    """Per second: offered and achieved requests, failures, candidate rows, p50/p99."""
    t = samples["t_start"] - t0
    second = np.floor(t).astype(int)
    frame = samples.assign(second=second)
    ok = frame[frame["ok"]]
    seconds = np.arange(int(np.ceil(schedule.total_s)) + 1)
    achieved = frame.groupby("second").size().reindex(seconds, fill_value=0)
    failed = frame[~frame["ok"]].groupby("second").size().reindex(seconds, fill_value=0)
    rows = ok.groupby("second")["rows"].sum().reindex(seconds, fill_value=0)
    lat = ok.groupby("second")["latency_ms"]
    offered = [schedule.offered_rate(p) if (p := schedule.phase_at(s + 0.5)) else 0.0
               for s in seconds]

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    top.step(seconds, offered, where="post", color="grey", linestyle="--", label="offered")
    top.plot(seconds, achieved.to_numpy(), drawstyle="steps-post", label="sent")
    top.plot(seconds, failed.to_numpy(), drawstyle="steps-post", color="red", label="failed")
    top.set(ylabel="requests/s", title="Throughput over time")
    top.legend()
    middle.plot(seconds, rows.to_numpy(), drawstyle="steps-post", color="green")
    middle.set(ylabel="candidate rows/s (ok)")
    bottom.plot(lat.quantile(0.5).index, lat.quantile(0.5).to_numpy(), label="p50")
    bottom.plot(lat.quantile(0.99).index, lat.quantile(0.99).to_numpy(), label="p99")
    bottom.set(xlabel="seconds since start", ylabel="latency (ms)")
    bottom.legend()
    for ax in (top, middle, bottom):
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
