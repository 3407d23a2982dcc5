"""The one-call GPU check: what a lent H100/H200 does for rankserve (``../shared/GPU.md``).

Stages, each recorded in ``<out>/gpu_check.json`` as soon as it ends (a device call that
runs out of time still returns what it measured), each one degrading to a reason instead
of a crash, all under one deadline (``--deadline-s``):

1. ``environment``: host, ONNX Runtime build and providers, the GPU through the gateway's
   NVML collector;
2. ``smoke``: one session on the GPU chain; per-node provider counts from ONNX Runtime's
   profile; any node on the CPU is a failure;
3. ``parity``: probabilities against a CPU FP32 session, per precision (FP32, TF32,
   TensorRT FP16): max and mean |dp|, top-50 overlap, beside the figures the model card's
   ``parity.precision`` emulated on CPU at export;
4. ``raw``: rows/s and p50/p99 per batch size, plain ``run``, bound I/O with packed
   (pinned on CUDA) buffers (:class:`serving.backends.ort_binding.BoundRunner`), batches
   padded to the GPU profile's shape buckets through bound I/O, and CUDA graphs (one per
   shape, ONNX Runtime's ``gpu_graph_id``) where they apply;
5. ``sessions``: 1/2/4 sessions of the largest batch run from as many threads;
6. ``gateway``: the real gateway end to end, 1,000 candidates per request, at each
   ``--gateway-rates`` rate: ok/s, p50/p99, gateway CPU % and GPU utilisation, with the
   GPU settings profile (``profile: gpu``: batch_rows 8192, buckets, bound I/O, graphs).

``--cpu-dry-run`` runs every stage on the CPU provider with small sizes and short runs;
a test runs it on every CI machine, since a device session has no time for a second try.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from loadtests.bench import raw_ort
from serving.ranking.features import ITEM_TO_USER, FeatureEncoder
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard

CPU, CUDA, TENSORRT = ("CPUExecutionProvider", "CUDAExecutionProvider",
                       "TensorrtExecutionProvider")
STAGES = ("environment", "smoke", "parity", "raw", "sessions", "gateway")


class Check:
    """The result document, written after every stage, and the deadline."""

    def __init__(self, out: Path, deadline_s: float) -> None:
        self.path = out / "gpu_check.json"
        self.result: dict[str, Any] = {"stages": {}}
        self._end = time.monotonic() + deadline_s

    def left(self) -> float:
        return self._end - time.monotonic()

    def stage(self, name: str, body: Callable[[], dict[str, Any]], needs_s: float) -> None:
        started = time.monotonic()
        if self.left() < needs_s:
            record: dict[str, Any] = {"skipped": f"deadline: {self.left():.0f} s left, "
                                                 f"stage needs about {needs_s:.0f} s"}
        else:
            try:
                record = body()
            except Exception as e:  # one failing stage must not lose the others' figures
                record = {"failed": f"{type(e).__name__}: {e}"}
        record["seconds"] = round(time.monotonic() - started, 2)
        self.result["stages"][name] = record
        self.path.write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        status = record.get("failed") or record.get("skipped") or "ok"
        print(f"== {name}: {status} ({record['seconds']} s)", flush=True)


def telemetry() -> dict[str, Any]:
    """One scrape of the gateway's GPU collector, or why there is none."""
    try:
        from serving.telemetry.gpu import GpuCollector
    except ImportError as e:
        return {"available": False, "reason": f"collector not importable: {e}"}
    collector = GpuCollector()
    try:
        if not collector.available:
            return {"available": False,
                    "reason": "no GPU: NVML could not be initialised (no driver or no device)"}
        return {"available": True, "metrics": {
            family.name: {s.labels.get("gpu", ""): s.value for s in family.samples}
            for family in collector.collect()}}
    finally:
        collector.close()


class Sampler:
    """While open: a process's CPU % (from /proc) and GPU 0's utilisation (NVML, 5 Hz)."""

    def __init__(self, pid: int) -> None:
        self._stat = Path(f"/proc/{pid}/stat")
        self._gpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_gpu, daemon=True)
        self._cpu0 = self._wall0 = 0.0
        self._cpu1 = self._wall1 = 0.0

    def _cpu_s(self) -> float:
        try:
            fields = self._stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _sample_gpu(self) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML, no driver or no GPU: nothing to sample
            return
        while not self._stop.wait(0.2):
            self._gpu.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def __enter__(self) -> Sampler:
        self._cpu0, self._wall0 = self._cpu_s(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._cpu1, self._wall1 = self._cpu_s(), time.monotonic()
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict[str, float | None]:
        wall = max(self._wall1 - self._wall0, 1e-9)
        return {"gateway_cpu_percent": 100.0 * (self._cpu1 - self._cpu0) / wall,
                "gpu_util_mean": float(np.mean(self._gpu)) if self._gpu else None,
                "gpu_util_max": max(self._gpu) if self._gpu else None}


class Setup:
    """The model, its batches and the provider chain under test."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        folder = raw_ort.model_dir(args.model_repository, args.model)
        self.onnx = folder / ONNX_FILE
        card = ModelCard.load(folder / CARD_FILE)
        self.card_precision = card.parity.get("precision", {})
        self.encoder = FeatureEncoder.from_card(card.features)
        self.requests = raw_ort.synthetic_requests(self.encoder, 64, args.candidates)
        self.chain = [CPU] if args.cpu_dry_run else [CUDA, CPU]

    def batch(self, rows: int) -> dict[str, np.ndarray]:
        """About ``rows`` candidate rows, as whole requests of ``--candidates`` each, merged
        as the batcher merges them (its row count: ``len(batch[ITEM_TO_USER])``)."""
        k = max(1, rows // self.args.candidates)
        return raw_ort.encode_batch(self.encoder,
                                    [self.requests[i % len(self.requests)] for i in range(k)])

    def session(self, providers: Sequence[str], options: Sequence[dict[str, str]] | None = None,
                profile: bool = False) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1 if providers[0] != CPU else (os.cpu_count() or 1)
        so.enable_profiling = profile
        return ort.InferenceSession(str(self.onnx), so, providers=list(providers),
                                    provider_options=list(options) if options else None)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from serving.backends.ort_providers import preload_gpu_libraries

    preloaded = preload_gpu_libraries([CUDA]) if not args.cpu_dry_run else False
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "device": ort.get_device(),
            "available": ort.get_available_providers(), "preloaded_cuda": preloaded,
            "cuda_module_loading": os.environ.get("CUDA_MODULE_LOADING"),
            "gpu": telemetry()}


def smoke(setup: Setup) -> dict[str, Any]:
    """A profiled run; every node's provider counted. A GPU chain with a CPU node fails."""
    from serving.backends.ort_providers import why_not_loaded

    session = setup.session(setup.chain, profile=True)
    got = session.get_providers()
    session.run(None, setup.batch(setup.args.candidates))
    profile = Path(session.end_profiling())
    counts: dict[str, int] = {}
    for event in json.loads(profile.read_text()):
        provider = event.get("args", {}).get("provider")
        if event.get("cat") == "Node" and provider and event["name"].endswith("_kernel_time"):
            counts[provider] = counts.get(provider, 0) + 1
    profile.unlink(missing_ok=True)
    record: dict[str, Any] = {"requested": setup.chain, "session_providers": got,
                              "nodes_per_provider": counts}
    if setup.chain[0] != CPU and got[0] != setup.chain[0]:
        record["failed"] = f"{setup.chain[0]} not loaded: {why_not_loaded(setup.chain[0])}"
    elif setup.chain[0] != CPU and counts.get(CPU):
        record["failed"] = f"{counts[CPU]} node(s) fell back to the CPU"
    return record


def _compare(reference: np.ndarray, got: np.ndarray, k: int = 50) -> dict[str, float]:
    dp = np.abs(reference.astype(np.float64) - got.astype(np.float64))
    top_ref = set(np.argsort(-reference[:, 0])[:k].tolist())
    top_got = set(np.argsort(-got[:, 0])[:k].tolist())
    return {"max_abs_dp": float(dp.max()), "mean_abs_dp": float(dp.mean()),
            "top50_overlap": len(top_ref & top_got) / k}


def parity(setup: Setup) -> dict[str, Any]:
    inputs = setup.batch(1000)
    reference = setup.session([CPU]).run(["probs"], inputs)[0]
    precisions: dict[str, tuple[list[str], list[dict[str, str]]]] = {
        "fp32": ([CUDA, CPU], [{"use_tf32": "0"}, {}]),
        "tf32": ([CUDA, CPU], [{"use_tf32": "1"}, {}]),
        "fp16": ([TENSORRT, CUDA, CPU], [{"trt_fp16_enable": "1"}, {"use_tf32": "0"}, {}])}
    if setup.args.cpu_dry_run:
        precisions = {"fp32": ([CPU], [{}])}
    out: dict[str, Any] = {}
    for name, (chain, options) in precisions.items():
        if chain[0] not in ort.get_available_providers():
            out[name] = {"skipped": f"{chain[0]} not in this build"}
            continue
        session = setup.session(chain, options)
        if session.get_providers()[0] != chain[0]:
            from serving.backends.ort_providers import why_not_loaded
            out[name] = {"skipped": f"{chain[0]}: {why_not_loaded(chain[0])}"}
            continue
        out[name] = _compare(reference, session.run(["probs"], inputs)[0])
    out["card_emulated"] = {p: {k: v for k, v in entry.items() if k != "method"}
                            for p, entry in setup.card_precision.items()
                            if isinstance(entry, dict) and "max_abs_diff" in entry}
    return out


def _timed(call: Callable[[], object], seconds: float) -> dict[str, float]:
    for _ in range(3):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    lat = np.asarray(times) * 1e3
    return {"runs": len(times), "mean_s": float(np.mean(times)),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def _bind(call: Callable[[dict[str, np.ndarray]], object],
          batch: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: call(batch)


def _padded(call: Callable[[dict[str, np.ndarray]], Any]
            ) -> Callable[[dict[str, np.ndarray]], Any]:
    """``call`` on batches padded to the GPU profile's buckets, as the batcher pads them."""
    from serving.batching.buckets import Buckets
    from serving.batching.layout import CandidateLayout
    from serving.ranking.features import ITEM_INPUTS, USER_INPUTS
    from serving.settings import PROFILES

    buckets = Buckets.of(PROFILES["gpu"]["buckets"], PROFILES["gpu"]["user_buckets"])
    layout = CandidateLayout(USER_INPUTS, ITEM_INPUTS, ITEM_TO_USER)
    return lambda batch: call(layout.pad(batch, buckets)[0])


def raw(setup: Setup) -> dict[str, Any]:
    from serving.backends.ort_binding import BoundRunner

    device = "cpu" if setup.chain[0] == CPU else "cuda"
    modes: dict[str, Callable[[], tuple[ort.InferenceSession, Callable[..., Any]]]] = {
        "plain": lambda: (s := setup.session(setup.chain), lambda x: s.run(None, x)),
        "bound": lambda: (s := setup.session(setup.chain),
                          BoundRunner(s, device).run),
        "bucketed_bound": lambda: (s := setup.session(setup.chain),
                                   _padded(BoundRunner(s, device).run))}
    if device == "cuda":
        modes["cuda_graphs"] = lambda: (  # one graph per shape (gpu_graph_id)
            s := setup.session(setup.chain, [{"enable_cuda_graph": "1"}, {}]),
            BoundRunner(s, device, graphs=True).run)
        modes["bucketed_cuda_graphs"] = lambda: (
            s := setup.session(setup.chain, [{"enable_cuda_graph": "1"}, {}]),
            _padded(BoundRunner(s, device, graphs=True).run))
    out: dict[str, Any] = {"skipped_modes": {} if device == "cuda" else {
        "cuda_graphs": "CPU dry run: no CUDA graphs",
        "bucketed_cuda_graphs": "CPU dry run: no CUDA graphs"}}
    for mode, build in modes.items():
        try:
            session, call = build()
        except Exception as e:  # an option this build rejects: say so, keep the others
            out["skipped_modes"][mode] = f"{type(e).__name__}: {e}"
            continue
        points = []
        for wanted in setup.args.raw_rows:
            batch = setup.batch(wanted)
            rows = len(batch[ITEM_TO_USER])
            try:
                timing = _timed(_bind(call, batch), setup.args.seconds)
            except Exception as e:  # e.g. CUDA graphs with a second shape
                points.append({"rows": rows, "failed": f"{type(e).__name__}: {e}"})
                continue
            points.append({"rows": rows, "rows_per_s": rows / timing["mean_s"], **timing})
        out[mode] = {"session_providers": session.get_providers(), "points": points}
        pinned = getattr(getattr(call, "__self__", None), "pinned", None)
        if pinned is not None:  # bound I/O: whether its host buffers are page-locked
            out[mode]["pinned"] = pinned
    return out


def _work(session: ort.InferenceSession, batch: dict[str, np.ndarray], stop: float,
          runs: list[int], i: int) -> None:
    while time.perf_counter() < stop:
        session.run(None, batch)
        runs[i] += 1


def sessions(setup: Setup) -> dict[str, Any]:
    batch = setup.batch(max(setup.args.raw_rows))
    rows = len(batch[ITEM_TO_USER])
    out = {}
    for n in setup.args.sessions:
        pool = [setup.session(setup.chain) for _ in range(n)]
        runs = [0] * n
        stop = time.perf_counter() + setup.args.seconds

        threads = [threading.Thread(target=_work, args=(pool[i], batch, stop, runs, i))
                   for i in range(n)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[str(n)] = {"rows": rows, "rows_per_s": rows * sum(runs) / (time.perf_counter()
                                                                        - started)}
    return out


def gateway(setup: Setup, out_dir: Path) -> dict[str, Any]:
    from loadtests.bank import Bank
    from loadtests.loadgen import run_point
    from loadtests.server import GatewayProcess
    from loadtests.traffic import CandidateCounts, HeldOutTraffic

    args = setup.args
    try:
        traffic = HeldOutTraffic.load(args.data, users=200)
    except FileNotFoundError as e:
        return {"skipped": f"no KuaiRand data for real requests: {e}"}
    bank = Bank.build(traffic, CandidateCounts.fixed(args.candidates), 64, "binary")
    settings = {"providers": ",".join(setup.chain), "require_providers": "gpu"
                if setup.chain[0] != CPU else "none", "batch_rows": str(args.gateway_batch_rows),
                "chunk_rows": str(args.gateway_batch_rows), "profile": "gpu"}
    points = []
    with GatewayProcess(out_dir / "gateway.log", args.model_repository, settings) as gw:
        assert gw.process is not None
        for rate in args.gateway_rates:
            with Sampler(gw.process.pid) as sampler:
                point = run_point(f"{gw.url}/v1/rank", bank.shots, bank.content_type, rate,
                                  args.gateway_seconds, budget_ms=50.0)
            points.append({**point.__dict__, **sampler.summary()})
            print(f"gateway: {rate:g} req/s -> {point.ok_rps:.0f} ok/s, p99 {point.p99_ms} ms",
                  flush=True)
    return {"settings": settings, "points": points}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="feed_ranker")
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--raw-rows", type=int, nargs="*",
                   default=[1024, 4096, 16384, 65536])
    p.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=1.0, help="timed run per point")
    p.add_argument("--data", default=None, help="KuaiRand folder (else the shared slice)")
    p.add_argument("--gateway-rates", type=float, nargs="*",
                   default=[100.0, 200.0, 400.0, 800.0])
    p.add_argument("--gateway-seconds", type=float, default=5.0)
    p.add_argument("--gateway-batch-rows", type=int, default=8192)
    p.add_argument("--deadline-s", type=float, default=470.0,
                   help="stop starting stages after this many seconds")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="every stage on the CPU provider, small and short")
    args = p.parse_args(argv)
    if args.cpu_dry_run:
        args.candidates = min(args.candidates, 100)
        args.raw_rows = [r for r in args.raw_rows if r <= 512] or [128, 512]
        args.sessions = [1, 2]
        args.seconds = min(args.seconds, 0.1)
        args.gateway_rates = args.gateway_rates[:1] if argv and "--gateway-rates" in argv \
            else [20.0]
        args.gateway_seconds = min(args.gateway_seconds, 1.5)
        args.gateway_batch_rows = 2048
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, args.deadline_s)
    check.result["cpu_dry_run"] = args.cpu_dry_run
    check.stage("environment", lambda: environment(args), 1)
    setup = Setup(args)
    check.stage("smoke", lambda: smoke(setup), 5)
    check.stage("parity", lambda: parity(setup), 10)
    check.stage("raw", lambda: raw(setup), 20)
    check.stage("sessions", lambda: sessions(setup), 10)
    check.stage("gateway", lambda: gateway(setup, args.out), 30)
    failed = [n for n, r in check.result["stages"].items() if "failed" in r]
    print(f"wrote {check.path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
