"""The benchmark (``python -m loadtests.bench``, ``make bench``): how close the gateway gets
to raw ONNX Runtime.

One run on this machine, the server pinned to one core and the load generator to another
(``taskset`` / ``sched_setaffinity``):

1. raw ONNX Runtime rows/s on the server's core, one intra-op thread, at the batch sizes
   the batcher builds (:mod:`loadtests.bench.raw_ort`): the limit;
2. the load generator's own ceiling, against a trivial sink server on the server's core;
3. the gateway (``rankserve serve``, embedded ONNX Runtime) under open-loop load at rising
   offered rates (:mod:`loadtests.loadgen`) for 500-candidate requests in columnar JSON and
   in binary, with batching on and off, and for 50-candidate requests with batching on and
   off; every request carries ``X-Request-Budget-Ms`` equal to the p99 bound;
4. where ``make triton-env`` installed the local tritonserver: the same gateway scoring
   through Triton over gRPC and over gRPC + shared memory (500 candidates, binary), and
   ``loadtests/bench/triton_hop.py``'s backend-level comparison (embedded, direct
   ``tritonclient``, TritonBackend with and without shared memory): the Triton hop.

Figure of merit: candidate rows/s sustained with p99 <= 25 ms (and <= 1% errors), as a
ratio to the raw limit; the median over ``--repeats`` sweeps, because other processes
share the machine. Results: ``loadtests/results/bench.json`` and ``bench.md`` (and the
raw files under ``loadtests/results/bench-<timestamp>/``). If binary falls below 0.6 of raw,
the gateway is profiled with py-spy under load and the hottest frames go into the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from loadtests import RESULTS
from loadtests.bank import Bank
from loadtests.bench import report as bench_report
from loadtests.loadgen import Point, ceiling_rps, run_point
from loadtests.server import GatewayError, GatewayProcess, free_port, pinned, wait_ready
from loadtests.traffic import CandidateCounts, HeldOutTraffic
from serving.client import Encoding

CEILING_CONCURRENCY = 32
MIN_REQUESTS = 20
WARMUP_RPS, WARMUP_S = 20.0, 2.0
OVERLOAD_ERROR_RATE = 0.05
FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)


Backend = Literal["embedded", "triton", "triton-shm"]


@dataclass(frozen=True)
class Config:
    """One gateway measurement: request size, encoding, batching on or off, and the
    gateway's backend (embedded ONNX Runtime, or Triton over gRPC, or with shared memory)."""

    candidates: int
    encoding: Encoding
    batching: bool
    backend: Backend = "embedded"

    @property
    def name(self) -> str:
        state = "on" if self.batching else "off"
        via = "" if self.backend == "embedded" else f", via {self.backend}"
        return f"{self.candidates} cand, {self.encoding}, batching {state}{via}"

    def settings(self, triton_url: str | None) -> dict[str, str]:
        """The gateway's ``RANKSERVE_*`` settings for this configuration."""
        out = {"batching": str(self.batching).lower()}
        if self.backend != "embedded":
            if triton_url is None:
                raise ValueError(f"{self.name} needs a Triton server")
            out.update(backend="triton", triton_url=triton_url, failover="none",
                       triton_shared_memory=str(self.backend == "triton-shm").lower())
        return out


CONFIGS = (Config(500, "columnar", True), Config(500, "binary", True),
           Config(500, "columnar", False), Config(500, "binary", False),
           Config(50, "binary", True), Config(50, "binary", False))
TRITON_CONFIGS = (Config(500, "binary", True, "triton"),
                  Config(500, "binary", True, "triton-shm"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="sweeps per configuration")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point")
    p.add_argument("--p99-ms", type=float, default=25.0, help="latency bound")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--server-cpu", default="0", help="core(s) of the gateway and raw ORT")
    p.add_argument("--client-cpu", type=int, default=1, help="core of the load generator")
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--data", default=None, help="KuaiRand folder (default: shared data)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--triton", choices=("auto", "never"), default="auto",
                   help="also measure the gateway through a local tritonserver (auto: when "
                        "`make triton-env` installed it) and run loadtests/bench/triton_hop.py")
    p.add_argument("--only", nargs="*", default=None, metavar="TEXT",
                   help="measure only configurations whose name contains one of these")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="py-spy the gateway: when binary < 0.6 of raw, always or never")
    return p.parse_args(argv)


def raw_limits(args: argparse.Namespace, folder: Path) -> dict[int, dict[str, Any]]:
    """Raw ONNX Runtime per request size, each in its own process on the server's core."""
    out = {}
    for candidates in sorted({c.candidates for c in CONFIGS}, reverse=True):
        path = folder / f"raw_ort_{candidates}.json"
        subprocess.run(["taskset", "-c", args.server_cpu, sys.executable, "-m",
                        "loadtests.bench.raw_ort", "--candidates", str(candidates), "--json",
                        str(path), "--model-repository", str(args.model_repository),
                        *(["--data", args.data] if args.data else [])],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ,
                                                                   "OMP_NUM_THREADS": "1"})
        out[candidates] = json.loads(path.read_text())
        print(f"raw ONNX Runtime, {candidates} candidates/request: "
              f"{out[candidates]['limit_rows_per_s']:,.0f} rows/s", flush=True)
    return out


def generator_ceiling(args: argparse.Namespace, bodies: dict[tuple[int, Encoding], Bank],
                      folder: Path) -> dict[str, Any]:
    """Requests/s the generator completes against a sink that does nothing (closed loop,
    a fixed number of requests in flight)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sink = subprocess.Popen(["taskset", "-c", args.server_cpu, sys.executable, "-m",
                             "loadtests.loadgen", "--sink", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, 30, sink)
        out = {}
        for (candidates, encoding), bank in bodies.items():
            if encoding != "binary":
                continue
            rps = asyncio.run(ceiling_rps(f"{url}/v1/rank", bank.shots, bank.content_type,
                                          CEILING_CONCURRENCY, 2.0))
            out[f"{candidates} cand binary"] = {"concurrency": CEILING_CONCURRENCY,
                                                "ok_rps": rps}
            print(f"load generator ceiling ({candidates} cand binary, sink server): "
                  f"{rps:,.0f} req/s", flush=True)
        return out
    finally:
        sink.terminate()
        sink.wait(timeout=10)


def sweep(url: str, bank: Bank, config: Config, raw_rows_per_s: float,
          args: argparse.Namespace) -> list[Point]:
    """Rising offered rates (fractions of the raw limit) until two in a row are clearly
    overloaded, then one more point halfway between the best hit and the next miss.

    A point that misses the bound narrowly (a noise spike from other processes on a shared
    machine) does not end the sweep; overload does: more than 5% errors, or p99 over twice
    the bound.
    """
    top = raw_rows_per_s / config.candidates
    points: list[Point] = []
    overloaded = 0

    def measure(rate: float) -> Point:
        seconds = max(args.seconds, MIN_REQUESTS / rate)  # a p99 needs some requests
        point = run_point(f"{url}/v1/rank", bank.shots, bank.content_type, rate, seconds,
                          budget_ms=args.p99_ms)
        points.append(point)
        print(f"  {config.name}: {rate:7.1f} req/s offered -> {point.rows_per_s:9,.0f} rows/s"
              f", p50 {_ms(point.p50_ms)}, p99 {_ms(point.p99_ms)} ms, errors "
              f"{point.error_rate:.1%}", flush=True)
        return point

    # Warm-up with a generous budget: the gateway's latency model learns this request
    # size's real cost before any point is measured (a model learned only from its warm-up
    # batch on a busy machine may refuse every request of a tight budget, and never learn).
    run_point(f"{url}/v1/rank", bank.shots, bank.content_type, min(WARMUP_RPS, top / 4),
              WARMUP_S, budget_ms=1000.0)
    for fraction in FRACTIONS:
        point = measure(fraction * top)
        over = not point.within(2 * args.p99_ms, OVERLOAD_ERROR_RATE)
        overloaded = overloaded + 1 if over else 0
        if overloaded == 2:
            break
    good = [p.offered_rps for p in points if p.within(args.p99_ms, args.max_error_rate)]
    bad = [p.offered_rps for p in points if p.offered_rps > max(good, default=0.0)
           and not p.within(args.p99_ms, args.max_error_rate)]
    if good and bad:
        measure((max(good) + min(bad)) / 2)
    return points


def sustained(points: Sequence[Point], p99_ms: float, max_error_rate: float) -> Point | None:
    """The point with the most rows/s among those within the bound."""
    good = [p for p in points if p.within(p99_ms, max_error_rate)]
    return max(good, key=lambda p: p.rows_per_s) if good else None


def profile_gateway(url: str, pid: int, bank: Bank, rate: float, folder: Path) -> list[str]:
    """py-spy the gateway for a few seconds under load; the hottest frames, self time."""
    out = folder / "pyspy.txt"
    binary = Path(sys.executable).with_name("py-spy")
    if not binary.is_file():
        return [f"py-spy not installed ({binary}); pip install py-spy to profile"]
    spy = subprocess.Popen([str(binary), "record", "-p",
                            str(pid), "-d", "6", "-r", "250", "-f", "raw", "-o", str(out),
                            "--nonblocking"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run_point(f"{url}/v1/rank", bank.shots, bank.content_type, rate, 5.0)
    spy.wait(timeout=60)
    return bench_report.hot_frames(out) if out.is_file() else ["py-spy wrote no profile"]


def groups(configs: Sequence[Config]) -> dict[tuple[Backend, bool], list[Config]]:
    """Configurations that share one gateway process (same backend and batching)."""
    out: dict[tuple[Backend, bool], list[Config]] = {}
    for config in configs:
        out.setdefault((config.backend, config.batching), []).append(config)
    return out


@contextlib.contextmanager
def local_triton(args: argparse.Namespace, folder: Path) -> Iterator[str | None]:
    """A local tritonserver pinned to the server's core (its address), or ``None`` when
    Triton is off or not installed (``make triton-env``)."""
    if args.triton == "never":
        yield None
        return
    try:
        from serving.localtriton.server import LocalTriton

        server = LocalTriton(args.model_repository, log_path=folder / "tritonserver.log")
    except Exception as e:  # Unavailable, ImportError: the bench runs without Triton
        print(f"Triton skipped: {e}", flush=True)
        yield None
        return
    with pinned({int(c) for c in args.server_cpu.split(",")}):  # tritonserver inherits it
        server.start()
    try:
        yield server.grpc_url
    finally:
        server.stop()


def triton_hop(args: argparse.Namespace, folder: Path) -> dict[str, Any] | None:
    """Issue 4's backend-level comparison (``loadtests/bench/triton_hop.py``)."""
    if args.triton == "never":
        return None
    path = folder / "triton_hop.json"
    done = subprocess.run([sys.executable, "-m", "loadtests.bench.triton_hop", "--json", str(path),
                           "--model-repository", str(args.model_repository)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not path.is_file():
        print(f"triton_hop failed: {done.stderr[-500:]}", flush=True)
        return {"failed": done.stderr[-2000:]}
    print(done.stdout, flush=True)
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.sched_setaffinity(0, {args.client_cpu})
    started = dt.datetime.now(dt.timezone.utc)
    folder = args.results / f"bench-{started.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    print(f"bench: gateway on core {args.server_cpu}, load generator on core "
          f"{args.client_cpu}; raw files in {folder}", flush=True)
    raw = raw_limits(args, folder)
    traffic = HeldOutTraffic.load(args.data, users=500)
    banks = {(c.candidates, c.encoding): Bank.build(traffic, CandidateCounts.fixed(c.candidates),
                                                     64, c.encoding, seed=c.candidates)
             for c in CONFIGS}
    ceiling = generator_ceiling(args, banks, folder)
    profile: list[str] | None = None
    with local_triton(args, folder) as triton_url:
        configs = [c for c in (*CONFIGS, *(TRITON_CONFIGS if triton_url else ()))
                   if not args.only or any(text in c.name for text in args.only)]
        runs: dict[str, list[list[Point]]] = {c.name: [] for c in configs}
        for repeat in range(args.repeats):
            for (backend, batching), members in groups(configs).items():
                log = folder / f"gateway-{backend}-{'on' if batching else 'off'}.log"
                gateway = GatewayProcess(log, args.model_repository,
                                         members[0].settings(triton_url), cpus=args.server_cpu)
                try:
                    gateway.start()
                except GatewayError as e:  # a broken start costs this repeat, not the run
                    print(f"gateway did not start, repeat {repeat + 1} of "
                          f"{[c.name for c in members]} skipped: {str(e)[:300]}", flush=True)
                    continue
                try:
                    for config in members:
                        print(f"repeat {repeat + 1}/{args.repeats}: {config.name}", flush=True)
                        runs[config.name].append(sweep(
                            gateway.url, banks[(config.candidates, config.encoding)], config,
                            raw[config.candidates]["limit_rows_per_s"], args))
                    if profile is None and backend == "embedded" and batching \
                            and repeat == args.repeats - 1 and _want_profile(args, runs, raw):
                        best = _median_point(runs[Config(500, "binary", True).name], args)
                        assert gateway.process is not None
                        profile = profile_gateway(gateway.url, gateway.process.pid,
                                                  banks[(500, "binary")],
                                                  0.8 * (best.ok_rps if best else 20.0), folder)
                finally:
                    gateway.stop()
    hop = triton_hop(args, folder)
    result = bench_report.assemble(
        started, args, raw, ceiling,
        {c.name: (c, [[asdict(p) for p in sweep_] for sweep_ in runs[c.name]],
                  [sustained(s, args.p99_ms, args.max_error_rate) for s in runs[c.name]])
         for c in configs}, profile, hop)
    (args.results / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    markdown = bench_report.to_markdown(result)
    (args.results / "bench.md").write_text(markdown)
    print("\n" + markdown)
    return 0


def _median_point(sweeps: list[list[Point]], args: argparse.Namespace) -> Point | None:
    best = [p for p in (sustained(s, args.p99_ms, args.max_error_rate) for s in sweeps) if p]
    if not best:
        return None
    return sorted(best, key=lambda p: p.rows_per_s)[len(best) // 2]


def _want_profile(args: argparse.Namespace, runs: dict[str, list[list[Point]]],
                  raw: dict[int, dict[str, Any]]) -> bool:
    if args.profile != "auto":
        return bool(args.profile == "always")
    name = Config(500, "binary", True).name
    if name not in runs:
        return False
    best = _median_point(runs[name], args)
    ratio = (best.rows_per_s if best else 0.0) / raw[500]["limit_rows_per_s"]
    return bool(ratio < 0.6)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
