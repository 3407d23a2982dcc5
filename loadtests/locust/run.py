"""Headless load test, bounded in time, ending in an SLO report (what ``make loadtest`` runs).

Steps: build a bank of real held-out requests -> start the gateway (embedded ONNX Runtime)
unless ``--target`` names a running one -> run Locust headless (one process, or a master
and ``--workers`` local workers) on the chosen shape while scraping ``/metrics`` -> stop
everything -> write the report. Everything lands in one dated folder
``loadtests/results/<UTC timestamp>/``:

* ``summary.md`` / ``summary.json``: SLO verdict, p50/p95/p99 against the budget, error
  and shed rates, per-phase figures, the knee (step shape);
* ``latency_vs_load.png``, ``throughput_over_time.png``, ``gateway_metrics.png``;
* Locust's ``report.html`` and ``locust_*.csv``; ``samples.csv`` (one row per request),
  ``metrics.csv`` (scrapes), the logs, the bank and the schedule.

Examples::

    python -m loadtests.locust.run                         # step shape, about 60 s
    python -m loadtests.locust.run --shape constant --rate 20 --duration 30
    python -m loadtests.locust.run --shape spike --rate 10 --spike-rate 80 --duration 40
    python -m loadtests.locust.run --target http://10.0.0.5:8000 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from loadtests import RESULTS
from loadtests.bank import ENCODINGS, Bank
from loadtests.locust import plots, report
from loadtests.locust.samples import read_samples
from loadtests.locust.scrape import MetricsScraper
from loadtests.locust.shapes import SHAPES, Schedule, constant, spike, step
from loadtests.server import GatewayError, GatewayProcess, free_port
from loadtests.traffic import CandidateCounts, HeldOutTraffic

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.locust.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=None,
                   help="URL of a running gateway (default: start an embedded one)")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--shape", choices=SHAPES, default="step")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load, at most")
    p.add_argument("--rate", type=float, default=20.0,
                   help="req/s: the constant rate, or the spike shape's base rate")
    p.add_argument("--start-rate", type=float, default=5.0, help="step: first rate")
    p.add_argument("--step-factor", type=float, default=1.5,
                   help="step: each rate is the last one times this (reaches past a "
                        "machine's capacity within a minute); 0 = add --step-rate instead")
    p.add_argument("--step-rate", type=float, default=5.0,
                   help="step: increment, with --step-factor 0")
    p.add_argument("--step-s", type=float, default=6.0, help="step: seconds per step")
    p.add_argument("--max-rate", type=float, default=400.0, help="step: the ceiling")
    p.add_argument("--spike-rate", type=float, default=80.0)
    p.add_argument("--spike-at", type=float, default=None,
                   help="spike: start second (default: a third into the run)")
    p.add_argument("--spike-s", type=float, default=5.0)
    p.add_argument("--per-user-rps", type=float, default=1.0,
                   help="requests/s of one simulated user (rates are quantised to it)")
    p.add_argument("--budget-ms", type=float, default=50.0,
                   help="request budget (X-Request-Budget-Ms) and the p99 SLO")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--encoding", choices=ENCODINGS, default="json")
    p.add_argument("--candidates-median", type=float, default=300.0)
    p.add_argument("--candidates-sigma", type=float, default=0.7)
    p.add_argument("--candidates-min", type=int, default=50)
    p.add_argument("--candidates-max", type=int, default=2000)
    p.add_argument("--top-k", type=int, default=None, help="ask for the top k only")
    p.add_argument("--bank-size", type=int, default=256, help="distinct requests to cycle")
    p.add_argument("--users", type=int, default=1000, help="held-out user-days to sample")
    p.add_argument("--data", default=None, help="KuaiRand folder (default: shared data)")
    p.add_argument("--workers", type=int, default=0,
                   help="distributed Locust: a master and this many local workers")
    p.add_argument("--results", type=Path, default=RESULTS, help="parent of the run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--prepare-only", action="store_true",
                   help="write the run folder's bank and schedule, then stop (for Locust "
                        "started by hand, e.g. on several machines)")
    p.add_argument("--report", type=Path, default=None, metavar="RUN_FOLDER",
                   help="only (re)build the report of a finished run folder")
    p.add_argument("--fail-on-slo", action="store_true", help="exit 1 when the SLO fails")
    return p.parse_args(argv)


def make_schedule(args: argparse.Namespace) -> Schedule:
    if args.shape == "constant":
        return constant(args.rate, args.duration, args.per_user_rps)
    if args.shape == "step":
        return step(args.start_rate, args.step_rate, args.step_s, args.max_rate,
                    args.duration, args.per_user_rps, factor=args.step_factor or None)
    spike_at = args.spike_at if args.spike_at is not None else args.duration / 3
    return spike(args.rate, args.spike_rate, args.duration, spike_at, args.spike_s,
                 args.per_user_rps)


def locust_commands(args: argparse.Namespace, folder: Path, target: str,
                    schedule: Schedule) -> list[list[str]]:
    """The master (or local) command first, then one per worker."""
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
            "--rankserve-bank", str(folder / "bank"),
            "--rankserve-schedule", str(folder / "schedule.json"),
            "--rankserve-budget-ms", f"{args.budget_ms:g}"]
    main = [*base, "--headless", "-H", target, "--csv", str(folder / "locust"),
            "--html", str(folder / "report.html"), "--only-summary", "--stop-timeout", "5",
            "--rankserve-results", str(folder), "--logfile", str(folder / "locust.log")]
    if not args.workers:
        return [main]
    port = free_port()
    main += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
             "--expect-workers", str(args.workers), "--expect-workers-max-wait", "60"]
    worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
              "--logfile", str(folder / "locust-worker.log")]
    return [main, *([worker] * args.workers)]


def latest_history(folder: Path) -> dict[str, str] | None:
    """The last aggregated row Locust wrote to its stats history CSV."""
    path = folder / "locust_stats_history.csv"
    if not path.is_file():
        return None
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"]
    return rows[-1] if rows else None


def shape_start(folder: Path) -> float | None:
    """Wall time the load shape started, once Locust has written it."""
    path = folder / "timeline.json"
    return float(json.loads(path.read_text())["t0"]) if path.is_file() else None


def progress_line(elapsed: float, schedule: Schedule, history: dict[str, str] | None,
                  scrape: dict[str, float] | None) -> str:
    phase = schedule.phase_at(elapsed)
    where = f"{phase.name} offered {schedule.offered_rate(phase):g} req/s" if phase \
        else "draining"
    parts = [f"[{elapsed:5.1f}/{schedule.total_s:.0f} s] {where}"]
    if history:
        parts.append(f"since start: {history['Total Request Count']} requests, "
                     f"{history['Total Failure Count']} failed | last 10 s: p50 "
                     f"{history['50%']} ms, p99 {history['99%']} ms")
    if scrape:
        parts.append(f"gateway queue now {scrape.get('queue_rows', 0):.0f} rows, "
                     f"{scrape.get('shed_total', 0):.0f} shed since start")
    return " | ".join(parts)


@contextlib.contextmanager
def gateway(args: argparse.Namespace, folder: Path) -> Iterator[tuple[str, str]]:
    """The target URL and a description; starts (and stops) an embedded gateway if needed."""
    if args.target:
        yield args.target.rstrip("/"), "external gateway"
        return
    with GatewayProcess(folder / "gateway.log", args.model_repository) as process:
        yield process.url, "embedded ONNX Runtime gateway started by the runner"


def run_locust(commands: list[list[str]], folder: Path, schedule: Schedule,
               scraper: MetricsScraper, quiet: bool) -> int:
    """Run master/local and workers to completion, printing progress every 2 s."""
    log = (folder / "locust.stdout").open("ab")
    processes = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
                 for cmd in commands]
    start = time.monotonic()
    limit = schedule.total_s + 90
    try:
        while processes[0].poll() is None:
            if time.monotonic() - start > limit:
                raise TimeoutError(f"Locust still running after {limit:.0f} s")
            time.sleep(2.0)
            t0 = shape_start(folder)
            if not quiet and t0 is not None:
                print(progress_line(time.time() - t0, schedule, latest_history(folder),
                                    scraper.latest()), flush=True)
        for worker in processes[1:]:
            worker.wait(timeout=30)
        return processes[0].returncode
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        log.close()


def write_report(folder: Path, schedule: Schedule, slo: report.Slo,
                 run: dict[str, Any]) -> dict[str, Any]:
    """Summary JSON + markdown and the plots, from the files the run left in ``folder``."""
    samples = read_samples(folder / "samples.csv")
    t0 = shape_start(folder)
    if t0 is None:
        raise FileNotFoundError(f"{folder}/timeline.json: the load shape never started")
    metrics_path = folder / "metrics.csv"
    # A labelled series appears only after its first observation: absent means zero.
    gateway_frame = pd.read_csv(metrics_path).fillna(0.0) if metrics_path.stat().st_size \
        else None
    summary = report.summarise(samples, schedule, t0, slo, run, gateway_frame)
    # A spike is one rate, a burst, and the same rate again: what it shows is recovery over
    # time, which a latency-against-load line (two points) cannot.
    first = plots.latency_over_time(folder, samples, schedule, t0, summary) \
        if schedule.shape == "spike" else plots.latency_vs_load(folder, summary)
    names = [first, plots.throughput_over_time(folder, samples, schedule, t0, summary)]
    if gateway_frame is not None and not gateway_frame.empty:
        names.append(plots.gateway_metrics(folder, gateway_frame, t0))
    report.write_summary(folder, summary, names)
    return summary


def load(args: argparse.Namespace, folder: Path, schedule: Schedule) -> tuple[int, str]:
    """Run the load against the target; Locust's exit code and the target URL.

    Raises:
        GatewayError: the embedded gateway did not start.
        TimeoutError: Locust overran the schedule by far.
    """
    with gateway(args, folder) as (target, description):
        print(f"target {target} ({description}); {args.shape} shape, "
              f"{len(schedule.phases)} phase(s), {schedule.load_s:g} s of load, "
              f"{'local' if not args.workers else f'master + {args.workers} worker(s)'}",
              flush=True)
        scraper = MetricsScraper(target)
        scraper.start()
        try:
            code = run_locust(locust_commands(args, folder, target, schedule), folder,
                              schedule, scraper, args.quiet)
        finally:
            scraper.stop()
            scraper.write_csv(folder / "metrics.csv")
    return code, target


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        return finish(args.report)
    schedule = make_schedule(args)
    started = dt.datetime.now(dt.timezone.utc)
    folder = args.results / started.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=False)
    counts = CandidateCounts(args.candidates_median, args.candidates_sigma,
                             args.candidates_min, args.candidates_max)
    print(f"run folder: {folder}\nbuilding {args.bank_size} {args.encoding} requests from "
          f"held-out KuaiRand days ({counts.describe()} candidates)...", flush=True)
    traffic = HeldOutTraffic.load(args.data, users=args.users, seed=args.seed)
    Bank.build(traffic, counts, args.bank_size, args.encoding, args.top_k,
               args.seed).save(folder / "bank")
    (folder / "schedule.json").write_text(json.dumps(schedule.to_dict(), indent=1))
    run = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "target": args.target,
           "gateway": "external gateway" if args.target else "embedded ONNX Runtime gateway "
           "started by the runner", "encoding": args.encoding,
           "candidates": counts.describe(), "top_k": args.top_k, "workers": args.workers,
           "load": f"{args.shape}: " + ", ".join(
               f"{p.name} {schedule.offered_rate(p):g} req/s x {p.duration_s:g} s"
               for p in schedule.phases)}
    slo = report.Slo(args.budget_ms, args.max_error_rate)
    (folder / "run.json").write_text(json.dumps({"run": run, "slo": asdict(slo)}, indent=1))
    if args.prepare_only:
        print(f"prepared {folder / 'bank'} and {folder / 'schedule.json'}")
        return 0
    try:
        code, target = load(args, folder, schedule)
    except (GatewayError, TimeoutError) as e:
        print(f"load test aborted: {e}", file=sys.stderr)
        return 2
    run["target"] = target
    (folder / "run.json").write_text(json.dumps({"run": run, "slo": asdict(slo)}, indent=1))
    if not (folder / "samples.csv").is_file():
        print(f"Locust exited with {code} and wrote no samples; see {folder}/locust.log",
              file=sys.stderr)
        return 2
    status = finish(folder)
    return status if args.fail_on_slo else 0


def finish(folder: Path) -> int:
    """Build the report of a run folder; 0 when the SLO verdict passes, else 1."""
    meta = json.loads((folder / "run.json").read_text())
    schedule = Schedule.from_dict(json.loads((folder / "schedule.json").read_text()))
    summary = write_report(folder, schedule, report.Slo(**meta["slo"]), meta["run"])
    verdict = summary["verdict"]
    print(f"\nSLO {'PASS' if verdict['pass'] else 'FAIL'}: {'; '.join(verdict['reasons'])}\n"
          f"report: {folder / 'summary.md'}")
    return 0 if verdict["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
