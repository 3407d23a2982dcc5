"""The benchmark's result: one JSON document and a markdown table, plus py-spy digestion.

Kept apart from the benchmark's driver (``loadtests/bench/__main__.py``, which runs the
processes and the load) so the figures' definitions sit in one small place: ratios are the
*median* over repeats of the rows/s sustained within the p99 bound, divided by raw ONNX
Runtime's best rows/s for the same request size on the same core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from loadtests.loadgen import Point

GENERATOR = ("open-loop asyncio + aiohttp client (one process, pinned to its own core), "
             "bodies pre-encoded by serving.client.encode_request, latency measured from "
             "each request's scheduled start")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def assemble(started: dt.datetime, args: argparse.Namespace, raw: dict[int, dict[str, Any]],
             ceiling: dict[str, Any],
             configs: dict[str, tuple[Any, list[list[dict[str, Any]]], list[Point | None]]],
             profile: list[str] | None, triton_hop: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """The result document; ``configs`` maps a name to (Config, sweeps, best point per
    sweep); ``triton_hop`` is ``loadtests/bench/triton_hop.py``'s result."""
    rows = []
    for name, (config, sweeps, best) in configs.items():
        per_repeat = [p.rows_per_s if p else 0.0 for p in best]
        median = statistics.median(per_repeat) if per_repeat else 0.0
        at = sorted((p for p in best if p), key=lambda p: p.rows_per_s)
        middle = at[len(at) // 2] if at else None
        rows.append({
            "name": name, "candidates": config.candidates, "encoding": config.encoding,
            "batching": config.batching, "backend": config.backend,
            "sustained_rows_per_s": per_repeat, "median_rows_per_s": median,
            "ratio_to_raw": median / raw[config.candidates]["limit_rows_per_s"],
            "low_load": _low_load(sweeps),
            "median_point": None if middle is None else {
                "offered_rps": middle.offered_rps, "p50_ms": middle.p50_ms,
                "p99_ms": middle.p99_ms, "error_rate": middle.error_rate},
            "sweeps": sweeps})
    by = {(r["candidates"], r["encoding"], r["batching"]): r for r in rows
          if r["backend"] == "embedded"}
    batching_gain = _ratio(by.get((50, "binary", True)), by.get((50, "binary", False)))
    aims = [_aim(what, value, target) for what, value, target in (
        ("binary, 500 candidates, >= 0.85 of raw", _field(by, (500, "binary", True)), 0.85),
        ("columnar JSON, 500 candidates, >= 0.5 of raw",
         _field(by, (500, "columnar", True)), 0.5),
        ("50 candidates: batching on >= 2x batching off",
         batching_gain if (50, "binary", False) in by else None, 2.0)) if value is not None]
    return {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(),
                    "load_average_at_end": list(os.getloadavg())},
        "settings": {"p99_ms": args.p99_ms, "max_error_rate": args.max_error_rate,
                     "seconds_per_point": args.seconds, "repeats": args.repeats,
                     "server_cpu": args.server_cpu, "client_cpu": args.client_cpu},
        "generator": {"kind": GENERATOR, "ceiling": ceiling},
        "raw": {str(k): v for k, v in raw.items()},
        "configs": rows, "aims": aims, "profile": profile, "triton_hop": triton_hop,
    }


def _low_load(sweeps: list[list[dict[str, Any]]]) -> dict[str, float | None]:
    """Median p50/p99 at each sweep's lowest offered rate: the latency of one request when
    the gateway is nearly idle."""
    firsts = [sweep[0] for sweep in sweeps if sweep]

    def median_of(key: str) -> float | None:
        values = [p[key] for p in firsts if p[key] is not None]
        return statistics.median(values) if values else None

    return {"offered_rps": median_of("offered_rps"), "p50_ms": median_of("p50_ms"),
            "p99_ms": median_of("p99_ms")}


def _ratio(on: dict[str, Any] | None, off: dict[str, Any] | None) -> float:
    if not on or not off or not off["median_rows_per_s"]:
        return 0.0
    return float(on["median_rows_per_s"] / off["median_rows_per_s"])


def _field(by: dict[tuple[int, str, bool], dict[str, Any]], key: tuple[int, str, bool]
           ) -> float | None:
    return float(by[key]["ratio_to_raw"]) if key in by else None


def _aim(what: str, value: float, target: float) -> dict[str, Any]:
    return {"aim": what, "value": value, "met": value >= target}


def hot_frames(path: Path, top: int = 12) -> list[str]:
    """Digest a py-spy ``--format raw`` file (``frame;frame;... count`` per line) into the
    frames with the most self time and the most inclusive time."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["py-spy collected no samples"]
    lines = [f"{total} samples"]
    lines += [f"self {n / total:6.1%}  {frame}" for frame, n in self_time.most_common(top)]
    lines += [f"incl {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)
              if not frame.startswith(("<module>", "run (", "_run_once", "run_forever",
                                       "run_until_complete", "main (", "_run ("))]
    return lines


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    for marker in ("site-packages/", "lib/python3", "/serving/"):
        if marker in frame:
            head, _, tail = frame.partition(marker)
            prefix = "serving/" if marker == "/serving/" else ""
            return f"{head.rsplit('(', 1)[0]}({prefix}{tail}"
    return frame


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _triton_lines(hop: dict[str, Any] | None) -> list[str]:
    """The Triton hop section from ``loadtests/bench/triton_hop.py``'s result."""
    if not hop:
        return []
    if "failed" in hop:
        return ["", "## Triton hop", "", "triton_hop failed: " + hop["failed"][-300:]]
    lines = ["", "## Triton hop (backend level, closed loop; loadtests/bench/triton_hop.py)",
             "",
             f"{hop['rows_per_batch']} rows per batch, {hop['concurrency']} in flight, "
             f"Triton: {hop['triton']}.", "",
             "| mode | p50 ms | p99 ms | rows/s |", "|---|---:|---:|---:|"]
    for name, r in hop["modes"].items():
        lines.append(f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['rows_per_s']:,.0f} |")
    lines += ["", f"Triton hop (TritonBackend over gRPC - embedded, p50): "
              f"{hop['triton_hop_ms_p50']:+.2f} ms per batch; shared memory saves "
              f"{hop['shared_memory_saves_ms_p50']:+.2f} ms; TritonBackend vs direct "
              f"tritonclient: {hop['backend_vs_direct_ms_p50']:+.2f} ms."]
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        f"# Benchmark {result['started']}",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu']}), shared with other work while it ran "
        f"(load average at the end: {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}"
        f"), so figures are medians of {s['repeats']} sweeps. Gateway and raw ONNX Runtime on "
        f"core {s['server_cpu']}, load generator on core {s['client_cpu']}. Bound: p99 <= "
        f"{s['p99_ms']:g} ms and errors <= {s['max_error_rate']:.0%} (the budget header is "
        f"the bound), {s['seconds_per_point']:g} s per point (at least 20 requests), each "
        "sweep after a 2 s unmeasured warm-up at a 1,000 ms budget so the gateway's latency "
        "model has seen the request size.",
        "",
        f"Load generator: {result['generator']['kind']}. Its ceiling against a do-nothing "
        "sink on the server's core: " + ", ".join(
            f"{k}: {v['ok_rps']:,.0f} req/s" for k, v in result["generator"]["ceiling"].items())
        + ".",
        "",
        "## Raw ONNX Runtime (one core, one intra-op thread)",
        "",
        "| candidates/request | requests/batch | rows/batch | rows/s | p50 ms/batch |",
        "|---:|---:|---:|---:|---:|",
    ]
    for candidates, raw in result["raw"].items():
        for b in raw["batches"]:
            lines.append(f"| {candidates} | {b['requests']} | {b['rows']} | "
                         f"{b['rows_per_s']:,.0f} | {b['p50_ms']:.2f} |")
    lines += ["", f"Inputs: {next(iter(result['raw'].values()))['inputs']}.", "",
              f"## Gateway: candidate rows/s sustained with p99 <= {s['p99_ms']:g} ms", "",
              "| configuration | rows/s (median) | per sweep | ratio to raw | at req/s | p50 ms "
              "| p99 ms | low load: req/s, p50, p99 ms |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in result["configs"]:
        point, low = r["median_point"] or {}, r["low_load"]
        lines.append(
            f"| {r['name']} | {r['median_rows_per_s']:,.0f} | "
            f"{', '.join(f'{x:,.0f}' for x in r['sustained_rows_per_s'])} | "
            f"{r['ratio_to_raw']:.2f} | {point.get('offered_rps', 0):.0f} | "
            f"{_ms(point.get('p50_ms'))} | {_ms(point.get('p99_ms'))} | "
            f"{_ms(low['offered_rps'])}, {_ms(low['p50_ms'])}, {_ms(low['p99_ms'])} |")
    lines += ["", "## Aims", "", "| aim | value | met |", "|---|---:|---|"]
    for aim in result["aims"]:
        lines.append(f"| {aim['aim']} | {aim['value']:.2f} | {'yes' if aim['met'] else 'no'} |")
    lines += _triton_lines(result.get("triton_hop"))
    if result["profile"]:
        lines += ["", "## Where the gateway's time goes (py-spy, 500 candidates, binary)", "",
                  "```", *result["profile"], "```"]
    return "\n".join(lines) + "\n"
