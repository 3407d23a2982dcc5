"""Turn a run's samples into the SLO verdict: per-phase latency, errors, sheds, the knee.

Definitions (also printed in every summary):

* latency percentiles are over requests that succeeded (2xx and a complete, ranked
  answer); a shed request answers in microseconds and would flatter the p99, so failures
  are counted separately;
* error rate = requests that failed for any reason (non-2xx, failed response check,
  connection error) / all requests; shed rate = 429 or 503 answers / all requests;
* a phase meets the SLO when its p99 <= budget and its error rate <= the allowed rate;
* the first ``settle_s`` seconds of every phase are left out (users ramping up or down);
* the knee (step shape) is the highest offered rate of the unbroken run of steps, from the
  first, that meet the SLO, and only when a later step broke it: if every step met the SLO
  the run never reached the knee, and the report says so instead of naming one.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests.locust.shapes import Phase, Schedule


@dataclass(frozen=True)
class Slo:
    budget_ms: float = 50.0
    max_error_rate: float = 0.01
    settle_s: float = 1.0


@dataclass(frozen=True)
class PhaseResult:
    name: str
    offered_rps: float
    seconds: float
    requests: int
    achieved_rps: float
    rows_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    error_rate: float
    shed_rate: float
    meets_slo: bool


def percentiles(latency_ms: pd.Series) -> dict[str, float | None]:
    """p50/p95/p99/max in ms; ``None`` each when there is no sample."""
    if latency_ms.empty:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(latency_ms.to_numpy(), [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "max_ms": float(latency_ms.max())}


def phase_result(samples: pd.DataFrame, phase: Phase, offered_rps: float,
                 slo: Slo) -> PhaseResult:
    """Figures of the samples that started inside ``phase`` (``t`` relative to run start)."""
    lo = phase.start_s + min(slo.settle_s, phase.duration_s / 2)
    seconds = phase.end_s - lo
    window = samples[(samples["t"] >= lo) & (samples["t"] < phase.end_s)]
    ok = window[window["ok"]]
    n = len(window)
    error_rate = float((~window["ok"]).mean()) if n else 0.0
    stats = percentiles(ok["latency_ms"])
    p99 = stats["p99_ms"]
    meets = n > 0 and p99 is not None and p99 <= slo.budget_ms \
        and error_rate <= slo.max_error_rate
    return PhaseResult(
        name=phase.name, offered_rps=offered_rps, seconds=seconds, requests=n,
        achieved_rps=n / seconds, rows_per_s=float(ok["rows"].sum()) / seconds,
        error_rate=error_rate, shed_rate=float(window["shed"].mean()) if n else 0.0,
        meets_slo=bool(meets), **stats)


SIZE_EDGES = (0, 200, 500, 1000, 10**9)


def by_size(samples: pd.DataFrame) -> list[dict[str, Any]]:
    """Latency and errors by candidate count: whether failures are load or request size."""
    out = []
    for lo, hi in itertools.pairwise(SIZE_EDGES):
        group = samples[(samples["rows"] >= lo) & (samples["rows"] < hi)]
        if group.empty:
            continue
        label = f"{lo}-{hi - 1}" if hi < 10**9 else f">= {lo}"
        out.append({"candidates": label, "requests": len(group),
                    "error_rate": float((~group["ok"]).mean()),
                    **percentiles(group.loc[group["ok"], "latency_ms"])})
    return out


def find_knee(results: list[PhaseResult]) -> PhaseResult | None:
    """The last phase of the unbroken prefix that meets the SLO, when a later phase breaks
    it; ``None`` if the first fails or none does (the ramp stopped below the knee)."""
    knee = None
    for result in results:
        if not result.meets_slo:
            return knee
        knee = result
    return None


def summarise(samples: pd.DataFrame, schedule: Schedule, t0: float, slo: Slo,
              run: dict[str, Any], gateway: pd.DataFrame | None = None) -> dict[str, Any]:
    """The summary JSON: run settings, totals, per-phase results, knee and verdict.

    ``samples`` carries wall-clock ``t_start``; ``t0`` is the wall time the shape started.
    """
    samples = samples.assign(t=samples["t_start"] - t0)
    in_load = samples[samples["t"] < schedule.load_s]
    results = [phase_result(samples, p, schedule.offered_rate(p), slo) for p in schedule.phases]
    n = len(in_load)
    ok = in_load[in_load["ok"]]
    totals = {
        "requests": n, "failures": int((~in_load["ok"]).sum()), "shed": int(in_load["shed"].sum()),
        "status_counts": {str(k): int(v) for k, v in
                          in_load["status"].value_counts().sort_index().items()},
        "error_rate": float((~in_load["ok"]).mean()) if n else 0.0,
        "shed_rate": float(in_load["shed"].mean()) if n else 0.0,
        "rows": int(ok["rows"].sum()),
        "achieved_rps": n / schedule.load_s,
        "rows_per_s": float(ok["rows"].sum()) / schedule.load_s,
        **percentiles(ok["latency_ms"]),
    }
    knee = find_knee(results) if schedule.shape == "step" else None
    summary: dict[str, Any] = {
        "run": run, "slo": asdict(slo), "schedule": schedule.to_dict(), "totals": totals,
        "phases": [asdict(r) for r in results], "by_size": by_size(in_load),
        "knee": asdict(knee) if knee else None, "verdict": verdict(schedule, results, knee),
    }
    if gateway is not None and not gateway.empty:
        summary["gateway"] = gateway_figures(gateway)
    return summary


def verdict(schedule: Schedule, results: list[PhaseResult],
            knee: PhaseResult | None) -> dict[str, Any]:
    """Pass/fail with reasons. Constant and spike: every phase must meet the SLO. Step: the
    first step must (otherwise there is no knee); the knee itself is the headline."""
    if schedule.shape == "step":
        if results and all(r.meets_slo for r in results):
            return {"pass": True, "reasons": [
                f"no knee found: every step up to {results[-1].offered_rps:g} req/s offered "
                "met the SLO; ramp higher (--max-rate, --step-factor, --duration) to find it"]}
        if knee is None:
            return {"pass": False, "reasons": ["even the first step misses the SLO"]}
        return {"pass": True, "reasons": [
            f"knee at {knee.offered_rps:g} req/s offered ({knee.rows_per_s:,.0f} rows/s); "
            "the next step broke the SLO"]}
    reasons = [f"phase '{r.name}': p99 {_ms(r.p99_ms)} ms, error rate {r.error_rate:.2%}"
               for r in results if not r.meets_slo]
    return {"pass": not reasons, "reasons": reasons or ["every phase meets the SLO"]}


def gateway_figures(gateway: pd.DataFrame) -> dict[str, float]:
    """Mean batch rows over the run, peak queue depth and in-flight batches, from scrapes."""
    first, last = gateway.iloc[0], gateway.iloc[-1]
    batches = float(last.get("batches", 0.0) - first.get("batches", 0.0))
    rows = float(last.get("batch_rows_sum", 0.0) - first.get("batch_rows_sum", 0.0))
    return {
        "batches": batches,
        "mean_batch_rows": rows / batches if batches else 0.0,
        "max_queue_rows": float(gateway.get("queue_rows", pd.Series([0.0])).max()),
        "max_inflight_batches": float(gateway.get("inflight_batches", pd.Series([0.0])).max()),
        "shed": float(last.get("shed_total", 0.0) - first.get("shed_total", 0.0)),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def to_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    """A short human report of :func:`summarise`'s dict."""
    run, slo, totals = summary["run"], summary["slo"], summary["totals"]
    verdict_line = "PASS" if summary["verdict"]["pass"] else "FAIL"
    lines = [
        f"# Load test {run.get('started', '')}: {summary['schedule']['shape']} shape",
        "",
        f"**SLO verdict: {verdict_line}** ({'; '.join(summary['verdict']['reasons'])})",
        "",
        f"- target: {run.get('target', '-')} ({run.get('gateway', '-')})",
        f"- load: {run.get('load', '-')}",
        f"- requests: real held-out KuaiRand users, {run.get('candidates', '-')} candidates, "
        f"{run.get('encoding', '-')} encoding, budget header {slo['budget_ms']:g} ms",
        f"- SLO: p99 <= {slo['budget_ms']:g} ms and error rate <= {slo['max_error_rate']:.1%}"
        f" per phase (first {slo['settle_s']:g} s of each phase left out)",
        "",
        "| requests | failures | error rate | shed rate | req/s | rows/s | p50 ms | p95 ms "
        "| p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {totals['requests']} | {totals['failures']} | {totals['error_rate']:.2%} | "
        f"{totals['shed_rate']:.2%} | {totals['achieved_rps']:.1f} | "
        f"{totals['rows_per_s']:,.0f} | "
        f"{_ms(totals['p50_ms'])} | {_ms(totals['p95_ms'])} | {_ms(totals['p99_ms'])} | "
        f"{_ms(totals['max_ms'])} |",
        "",
        "## Phases",
        "",
        "| phase | offered req/s | achieved req/s | rows/s | p50 ms | p95 ms | p99 ms "
        "| errors | shed | SLO |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in summary["phases"]:
        lines.append(
            f"| {p['name']} | {p['offered_rps']:g} | {p['achieved_rps']:.1f} | "
            f"{p['rows_per_s']:,.0f} | {_ms(p['p50_ms'])} | {_ms(p['p95_ms'])} | "
            f"{_ms(p['p99_ms'])} | {p['error_rate']:.2%} | {p['shed_rate']:.2%} | "
            f"{'ok' if p['meets_slo'] else 'MISS'} |")
    lines += ["", "## By candidate count (whole run)", "",
              "| candidates | requests | errors | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {g['candidates']} | {g['requests']} | {g['error_rate']:.2%} | "
              f"{_ms(g['p50_ms'])} | {_ms(g['p99_ms'])} |" for g in summary.get("by_size", [])]
    knee = summary["knee"]
    if summary["schedule"]["shape"] == "step":
        lines += ["", "**Knee:** " + (
            f"{knee['offered_rps']:g} req/s offered, {knee['rows_per_s']:,.0f} candidate "
            f"rows/s, p99 {_ms(knee['p99_ms'])} ms" if knee
            else "none found; " + summary["verdict"]["reasons"][0])]
    if "gateway" in summary:
        g = summary["gateway"]
        lines += ["", "## Gateway (scraped from /metrics)", "",
                  f"- batches: {g['batches']:.0f}, mean {g['mean_batch_rows']:.0f} rows per "
                  f"batch", f"- peak queue depth: {g['max_queue_rows']:.0f} rows; peak "
                  f"in-flight batches: {g['max_inflight_batches']:.0f}",
                  f"- shed by the gateway: {g['shed']:.0f}"]
    if plots:
        lines += ["", "Plots in the run folder: " + ", ".join(plots) + "; Locust's own "
                  "report: report.html, CSV stats: locust_*.csv."]
    return "\n".join(lines) + "\n"


def write_summary(folder: Path, summary: dict[str, Any], plots: list[str]) -> Path:
    """``summary.json`` and ``summary.md`` in ``folder``; returns the markdown path."""
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    path = folder / "summary.md"
    path.write_text(to_markdown(summary, plots))
    return path
