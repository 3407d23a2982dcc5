"""gRPC vs HTTP binary: gateway CPU per request and rows/s, at 50 and 500 candidates.

``python -m loadtests.bench.grpc_vs_http`` (under the bench lock on shared machines). The
same held-out requests go to one gateway over both transports in the same run: HTTP as
``application/x-rankserve-columns`` to ``/v1/rank``, gRPC as ``RankRequest`` messages to
the ``Ranking`` service (built once from the same bank, so neither client encodes while
measured). The gateway is pinned to one core, the load generator to another, as in
:mod:`loadtests.bench.cpu`, whose machinery this reuses:

* **gateway CPU ms/request** = server CPU seconds over a steady open-loop window (from
  /proc, the whole process) / requests answered - raw ONNX Runtime's time for one
  request's batch on the same core;
* **rows/s** = candidate rows answered per second in a closed loop with ``CONCURRENCY``
  calls always in flight (the single pinned core's capacity for this transport).

Medians of ``--repeats`` windows; compare the ratios within one run, not absolute figures
across machines.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from grpc import aio

from loadtests.bank import Bank
from loadtests.bench.cpu import gateway_arguments, model_cpu_ms, process_tree_cpu_s, save_results
from loadtests.grpc_shots import messages
from loadtests.loadgen import START_DELAY_S, client_session, closed_loop, offer, post_shots
from loadtests.server import GatewayProcess, free_port, pinned
from loadtests.traffic import CandidateCounts, HeldOutTraffic
from serving.rpc.stubs import ranking_pb2_grpc

Transport = Literal["http", "grpc"]
RATES = {50: 300.0, 500: 80.0}
"""Offered requests/s of the CPU window: well under one core's capacity (as cpu.py)."""
CONCURRENCY = 16
BUDGET_MS = 1000.0


@dataclass
class Result:
    candidates: int
    transport: Transport
    answered: int
    server_cpu_ms: float
    model_cpu_ms: float
    gateway_cpu_ms: float
    rows_per_s: float


class GrpcLoad:
    """The gRPC side of the load generator: one aio channel, prebuilt messages."""

    def __init__(self, target: str, bank: Bank) -> None:
        self.channel = aio.insecure_channel(target)
        self.stub = ranking_pb2_grpc.RankingStub(self.channel)
        self.messages = messages(bank)
        self.rows = [s.rows for s in bank.shots]

    async def call(self, i: int) -> int:
        """Rows answered by call ``i`` (0 when it failed)."""
        k = i % len(self.messages)
        try:
            await self.stub.Rank(self.messages[k], timeout=BUDGET_MS / 1e3)
        except grpc.RpcError:
            return 0
        return self.rows[k]

    async def offer(self, rate: float, seconds: float) -> int:
        """Open loop at ``rate``/s for ``seconds``: calls answered."""
        loop = asyncio.get_running_loop()
        start = loop.time() + START_DELAY_S
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(loop.create_task(self.call(i)))
        return sum(1 for rows in await asyncio.gather(*tasks) if rows)

    async def aclose(self) -> None:
        await self.channel.close()


async def _http_window(url: str, bank: Bank, rate: float, seconds: float) -> int:
    outcomes = await offer(url, bank.shots, bank.content_type, rate, seconds,
                           budget_ms=BUDGET_MS)
    return sum(1 for o in outcomes if o.status == 200)


async def _http_rows_per_s(url: str, bank: Bank, seconds: float) -> float:
    async with client_session(CONCURRENCY) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        outcomes = await closed_loop(post_shots(session, url, bank.shots, bank.content_type,
                                                BUDGET_MS), CONCURRENCY, seconds=seconds)
        return sum(o.rows for o in outcomes if o.status == 200) / (loop.time() - start)


async def _grpc_rows_per_s(load: GrpcLoad, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    rows = await closed_loop(load.call, CONCURRENCY, seconds=seconds)
    return sum(rows) / (loop.time() - start)


async def measure(transport: Transport, gateway: GatewayProcess, grpc_port: int,
                  bank: Bank, rate: float, seconds: float) -> tuple[int, float, float]:
    """(answered, server CPU ms per answered request, rows/s) for one transport."""
    assert gateway.process is not None
    url = f"{gateway.url}/v1/rank"
    load = GrpcLoad(f"127.0.0.1:{grpc_port}", bank) if transport == "grpc" else None
    try:
        async def window(s: float) -> int:
            if load is None:
                return await _http_window(url, bank, rate, s)
            return await load.offer(rate, s)

        await window(2.0)  # warm up (connections, the latency model)
        before = process_tree_cpu_s(gateway.process.pid)
        answered = await window(seconds)
        cpu_ms = (process_tree_cpu_s(gateway.process.pid) - before) * 1e3 / max(answered, 1)
        rows_per_s = (await _http_rows_per_s(url, bank, seconds) if load is None
                      else await _grpc_rows_per_s(load, seconds))
    finally:
        if load is not None:
            await load.aclose()
    return answered, cpu_ms, rows_per_s


def run(repository: Path, data: Path | None, seconds: float, repeats: int,
        server_cpu: str, client_cpu: str, out: Path) -> list[Result]:
    traffic = HeldOutTraffic.load(data, users=300)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for candidates, rate in RATES.items():
        counts = CandidateCounts.fixed(candidates)
        bank = Bank.build(traffic, counts, 64, "binary")
        with pinned({int(c) for c in server_cpu.split(",")}):
            model_ms = model_cpu_ms(repository, traffic.requests(counts, 1)[0], 1.0)
        samples: dict[Transport, list[tuple[int, float, float]]] = {"http": [], "grpc": []}
        with pinned({int(c) for c in client_cpu.split(",")}):
            for _ in range(repeats):
                grpc_port = free_port()
                settings = {"providers": "CPUExecutionProvider", "grpc_port": str(grpc_port),
                            "default_budget_ms": f"{BUDGET_MS:g}"}
                with GatewayProcess(out / "gateway.log", repository, settings,
                                    cpus=server_cpu) as gateway:
                    for transport in ("http", "grpc"):  # same gateway, same run
                        samples[transport].append(asyncio.run(measure(
                            transport, gateway, grpc_port, bank, rate, seconds)))
        for transport, runs in samples.items():
            server_ms = statistics.median(r[1] for r in runs)
            result = Result(candidates, transport, sum(r[0] for r in runs),
                            round(server_ms, 3), round(model_ms, 3),
                            round(server_ms - model_ms, 3),
                            round(statistics.median(r[2] for r in runs), 1))
            results.append(result)
            print(f"{candidates} cand, {transport}: server {server_ms:.3f} ms CPU/request, "
                  f"gateway {result.gateway_cpu_ms:.3f}, {result.rows_per_s:.0f} rows/s",
                  flush=True)
    return results


def to_markdown(results: Sequence[Result]) -> str:
    lines = ["| candidates | transport | requests answered | server CPU ms/request | model ms/"
             "request (raw ORT) | gateway CPU ms/request | rows/s (closed loop, "
             f"{CONCURRENCY} in flight) |", "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.candidates} | {'gRPC' if r.transport == 'grpc' else 'HTTP binary'} | "
              f"{r.answered} | {r.server_cpu_ms:.3f} | {r.model_cpu_ms:.3f} | "
              f"{r.gateway_cpu_ms:.3f} | {r.rows_per_s:.0f} |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = gateway_arguments("python -m loadtests.bench.grpc_vs_http", __doc__ or "", 4.0,
                             "gateways per size").parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = run(args.model_repository, args.data, args.seconds, args.repeats,
                  args.server_cpu, args.client_cpu, args.results / f"grpc-{stamp}")
    save_results(args.results, "grpc_vs_http",
                 f"gRPC vs HTTP binary: gateway CPU and rows/s ({stamp})", results,
                 to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
