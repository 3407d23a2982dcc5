"""The Python half of ``loadtests/bench/gpu_check.sh``: what a GPU machine can do for rankserve.

In one go, each step degrading to a clear message instead of a crash:

1. the GPU through the gateway's own NVML collector (:class:`serving.telemetry.gpu.GpuCollector`);
2. the ONNX Runtime build and its execution providers;
3. where the CUDA (or, with ``--tensorrt``, TensorRT) provider exists: raw ONNX Runtime
   rows/s on the GPU and on the CPU (one thread and all cores) in the same run, at batch
   sizes up to ``--batch-rows``;
4. where the gateway's imports are satisfiable and a GPU provider exists: the gateway on
   the GPU, a short open-loop run of 500-candidate binary requests.

Everything goes into ``<out>/gpu_check.json``; a summary is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.bench import raw_ort


def gpu_telemetry() -> dict[str, Any]:
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


def providers() -> dict[str, Any]:
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "device": ort.get_device(),
            "available": ort.get_available_providers()}


def gpu_providers(available: Sequence[str], tensorrt: bool) -> list[str]:
    """The GPU providers to benchmark, by :data:`loadtests.bench.raw_ort.PROVIDERS` key."""
    wanted = ["cuda", *(["tensorrt"] if tensorrt else [])]
    return [p for p in wanted if raw_ort.PROVIDERS[p] in available]


def raw_benchmarks(names: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Raw ONNX Runtime on each GPU provider, then on the CPU with 1 and all threads."""
    runs = [(name, 1) for name in names]
    runs += [("cpu", 1), ("cpu", os.cpu_count() or 1)]
    out: dict[str, Any] = {}
    for provider, threads in runs:
        key = f"{provider}-{threads}t"
        try:
            out[key] = raw_ort.run(args.model_repository, args.model, provider, threads,
                                   args.candidates, args.seconds, args.data, args.batch_rows)
        except Exception as e:  # one failing provider must not lose the others' figures
            out[key] = {"skipped": f"{type(e).__name__}: {e}"}
        result = out[key]
        print(f"raw ONNX Runtime {key}: " + (
            f"{result['limit_rows_per_s']:,.0f} rows/s at {result['limit_batch_rows']} rows "
            f"per batch" if "limit_rows_per_s" in result else result["skipped"]), flush=True)
    return out


def gateway_run(provider: str, args: argparse.Namespace) -> dict[str, Any]:
    """The gateway on ``provider``: a short open-loop run, or why it could not run."""
    missing = [m for m in ("orjson", "aiohttp", "pydantic_settings", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"gateway imports not satisfiable here: missing {', '.join(missing)}"}
    from loadtests.bank import Bank
    from loadtests.loadgen import run_point
    from loadtests.server import GatewayProcess
    from loadtests.traffic import CandidateCounts, HeldOutTraffic

    try:
        traffic = HeldOutTraffic.load(args.data, users=200)
    except FileNotFoundError as e:
        return {"skipped": f"no KuaiRand data for real requests: {e}"}
    bank = Bank.build(traffic, CandidateCounts.fixed(args.candidates), 64, "binary")
    chain = {"cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                          "CPUExecutionProvider"]}[provider]
    points = []
    with GatewayProcess(args.out / "gateway.log", args.model_repository,
                        {"providers": ",".join(chain)}) as gateway:
        for rate in args.gateway_rates:
            point = run_point(f"{gateway.url}/v1/rank", bank.shots, bank.content_type, rate, 3.0,
                              budget_ms=25.0)
            points.append(point.__dict__)
            print(f"gateway on {provider}: {rate:g} req/s -> {point.rows_per_s:,.0f} rows/s, "
                  f"p99 {point.p99_ms} ms", flush=True)
    return {"provider": provider, "points": points}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="feed_ranker")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--batch-rows", type=int, default=16384,
                   help="largest batch tried (GPUs want bigger batches than the CPU default)")
    p.add_argument("--seconds", type=float, default=1.0, help="timed run per batch size")
    p.add_argument("--data", default=None, help="KuaiRand folder (else synthetic ids)")
    p.add_argument("--tensorrt", action="store_true", help="also try TensorRT (slow builds)")
    p.add_argument("--gateway-rates", type=float, nargs="*", default=[50.0, 200.0, 400.0])
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count()}
    result["telemetry"] = gpu_telemetry()
    print("GPU telemetry (gateway collector): " + (
        json.dumps(result["telemetry"]["metrics"]) if result["telemetry"]["available"]
        else result["telemetry"]["reason"]), flush=True)
    result["providers"] = providers()
    print(f"onnxruntime {result['providers']['onnxruntime']} "
          f"({result['providers']['device']}): {', '.join(result['providers']['available'])}",
          flush=True)
    names = gpu_providers(result["providers"]["available"], args.tensorrt)
    if not names:
        result["benchmark"] = {"skipped": (
            "no GPU provider in this onnxruntime build (CUDAExecutionProvider missing); "
            "install onnxruntime-gpu (ORT=gpu make serve) to benchmark the GPU")}
        print(f"benchmark skipped: {result['benchmark']['skipped']}", flush=True)
    else:
        result["benchmark"] = raw_benchmarks(names, args)
        result["gateway"] = gateway_run(names[0], args)
        if "skipped" in result["gateway"]:
            print(f"gateway on GPU skipped: {result['gateway']['skipped']}", flush=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
