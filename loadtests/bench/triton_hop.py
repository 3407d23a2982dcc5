"""What the Triton hop costs: one batch scored four ways, closed loop, p50/p99 and rows/s.

* ``embedded``: the in-process ONNX Runtime backend (no hop at all, the reference);
* ``direct``: plain ``tritonclient.grpc.aio`` calls, request objects built per call, as a
  typical client would write them;
* ``backend_grpc``: rankserve's :class:`~serving.backends.triton.TritonBackend` over gRPC;
* ``backend_shm``: the same with system shared memory for inputs and outputs.

Besides latency it reports the CPU time this (the gateway's) process spends per call: on a
shared machine wall-clock figures move with other load, CPU per call much less, and it is
what the hop costs the gateway (serialising, copying) apart from the model itself.

The batch is one (or ``--requests``) 500-candidate request(s) encoded by the serving
feature encoder from ids in the model card's vocabularies. Without ``--triton-url`` the
script starts the local ``tritonserver`` (``rankserve triton``, python-backend mirror on
CPU) and stops it at the end; on a GPU node point it at the real Triton.

    python -m loadtests.bench.triton_hop --seconds 5 --json loadtests/results/triton.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import np_to_triton_dtype

from loadtests.bench.raw_ort import encode_batch, model_dir, synthetic_requests
from loadtests.loadgen import closed_loop
from serving.backends.base import Backend
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.backends.triton import TritonBackend
from serving.localtriton.server import LocalTriton
from serving.ranking.features import ITEM_TO_USER, FeatureEncoder
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard
from serving.repository.served import served_cards

Call = Callable[[], Awaitable[Any]]
TIMEOUT_S = 10.0


async def timed_calls(call: Call, seconds: float, concurrency: int
                      ) -> tuple[list[float], float, float]:
    """Run ``call`` back to back from ``concurrency`` callers for about ``seconds`` (a
    closed loop); returns each call's latency, the wall time and this process's CPU time
    (all threads)."""
    async def timed(_: int) -> float:
        start = time.perf_counter()
        await call()
        return time.perf_counter() - start

    start, cpu = time.perf_counter(), time.process_time()
    times = await closed_loop(timed, concurrency, seconds=seconds)
    return times, time.perf_counter() - start, time.process_time() - cpu


async def compare(calls: Mapping[str, Call], rows: int, seconds: float, rounds: int,
                  concurrency: int, warmup: int = 5) -> dict[str, dict[str, float]]:
    """Interleave the modes in ``rounds`` short runs, so load that comes and goes on a
    shared machine hits every mode alike; then p50/p99 and rows/s per mode."""
    for call in calls.values():
        for _ in range(warmup):
            await call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    walls, cpus = dict.fromkeys(calls, 0.0), dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for name, call in calls.items():
            latencies, wall, cpu = await timed_calls(call, seconds / rounds, concurrency)
            times[name] += latencies
            walls[name] += wall
            cpus[name] += cpu
    results = {}
    for name, latencies in times.items():
        lat = np.asarray(latencies) * 1e3
        results[name] = {"calls": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                         "p99_ms": float(np.percentile(lat, 99)),
                         "rows_per_s": rows * len(lat) / walls[name],
                         "client_cpu_ms_per_call": cpus[name] * 1e3 / len(lat)}
    return results


def direct_call(client: InferenceServerClient, model: str,
                batch: Mapping[str, np.ndarray]) -> Call:
    """A plain tritonclient call, request objects built each time."""
    async def call() -> Any:
        inputs = []
        for name, array in batch.items():
            infer_input = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        result = await client.infer(model, inputs, client_timeout=TIMEOUT_S)
        return result.as_numpy("probs")
    return call


def backend_call(backend: Backend, model: str, batch: Mapping[str, np.ndarray]) -> Call:
    async def call() -> Any:
        return (await backend.infer(model, batch, TIMEOUT_S)).outputs
    return call


@contextlib.contextmanager
def triton_server(url: str | None, repository: Path) -> Iterator[str]:
    """The given Triton, or a local one for the duration of the run."""
    if url is not None:
        yield url
        return
    with LocalTriton(repository) as server:
        yield server.grpc_url


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    folder = model_dir(args.model_repository, args.model)
    card = ModelCard.load(folder / CARD_FILE)
    encoder = FeatureEncoder.from_card(card.features)
    batch = encode_batch(encoder, synthetic_requests(encoder, args.requests, args.candidates))
    rows = len(batch[ITEM_TO_USER])
    cards = served_cards(args.model_repository)
    embedded = OnnxRuntimeBackend({args.model: folder / ONNX_FILE},
                                  instances=args.concurrency)
    backends = {name: TritonBackend(url, cards, ready_model=args.model,
                                    instances=args.concurrency, shared_memory=shm)
                for name, shm in (("backend_grpc", False), ("backend_shm", True))}
    async with contextlib.AsyncExitStack() as stack:
        for backend in (embedded, *backends.values()):
            await backend.start()
            stack.push_async_callback(backend.aclose)
        client = await stack.enter_async_context(InferenceServerClient(url))
        calls = {"embedded": backend_call(embedded, args.model, batch),
                 "direct": direct_call(client, args.model, batch),
                 **{name: backend_call(b, args.model, batch) for name, b in backends.items()}}
        results = await compare(calls, rows, args.seconds, args.rounds, args.concurrency)
    p50 = {name: r["p50_ms"] for name, r in results.items()}
    return {
        "rows_per_batch": rows, "requests_per_batch": args.requests, "seconds": args.seconds,
        "concurrency": args.concurrency, "triton_url": url,
        "triton": "given" if args.triton_url else "local python-backend mirror (CPU)",
        "modes": results,
        "triton_hop_ms_p50": p50["backend_grpc"] - p50["embedded"],
        "shared_memory_saves_ms_p50": p50["backend_grpc"] - p50["backend_shm"],
        "backend_vs_direct_ms_p50": p50["backend_grpc"] - p50["direct"],
    }


def table(result: Mapping[str, Any]) -> str:
    lines = [f"{result['rows_per_batch']} rows per batch, concurrency "
             f"{result['concurrency']}, Triton: {result['triton']}",
             "| mode | p50 ms | p99 ms | rows/s | gateway-process CPU ms/call |",
             "|---|---:|---:|---:|---:|"]
    for name, r in result["modes"].items():
        lines.append(f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['rows_per_s']:,.0f} | {r['client_cpu_ms_per_call']:.2f} |")
    lines.append(f"Triton hop (backend_grpc - embedded, p50): "
                 f"{result['triton_hop_ms_p50']:+.2f} ms; shared memory saves "
                 f"{result['shared_memory_saves_ms_p50']:+.2f} ms; TritonBackend vs direct "
                 f"tritonclient: {result['backend_vs_direct_ms_p50']:+.2f} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.triton_hop",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="feed_ranker")
    parser.add_argument("--triton-url", default=None,
                        help="a running Triton's gRPC address (default: start a local one)")
    parser.add_argument("--candidates", type=int, default=500, help="rows per request")
    parser.add_argument("--requests", type=int, default=1, help="requests per batch")
    parser.add_argument("--concurrency", type=int, default=1, help="batches in flight")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed run per mode")
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved runs per mode (the seconds are split over them)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    with triton_server(args.triton_url, args.model_repository) as url:
        result = asyncio.run(run(args, url))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
