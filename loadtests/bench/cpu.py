"""Gateway CPU per request: what rankserve's own Python costs, beside the model.

``python -m loadtests.bench.cpu`` (also a step of ``make bench``). The gateway runs pinned to
one core and the load generator to another; each configuration is offered a steady
open-loop rate well under capacity for a few seconds, and

    gateway CPU per request = (server CPU seconds over the window, every worker process
                               included, from /proc) / requests answered
                              - model CPU per request

where the model's CPU per request is raw ONNX Runtime's time for one request's batch on the
same core, measured in the same run (:mod:`loadtests.bench.raw_ort`; one intra-op thread,
so its wall time is its CPU time). Under light load every request is its own batch, so the
subtraction is like for like. Medians of ``--repeats``; machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests import RESULTS
from loadtests.bank import Bank
from loadtests.bench import raw_ort
from loadtests.loadgen import offer
from loadtests.server import GatewayProcess, pinned
from loadtests.traffic import Body, CandidateCounts, HeldOutTraffic
from serving.client import Encoding
from serving.ranking.features import FeatureEncoder
from serving.repository.served import load_model

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    candidates: int
    encoding: Encoding
    rate: float
    workers: int = 1

    @property
    def label(self) -> str:
        workers = f", {self.workers} workers" if self.workers > 1 else ""
        return f"{self.candidates} cand, {self.encoding}{workers}"


CASES = (
    Case(50, "binary", 300.0), Case(500, "binary", 80.0), Case(1000, "binary", 40.0),
    Case(500, "columnar", 80.0), Case(500, "json", 40.0),
    Case(500, "binary", 80.0, workers=2),
)


@dataclass
class Result:
    case: str
    answered: int
    server_cpu_ms: float
    model_cpu_ms: float
    gateway_cpu_ms: float


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (the workers)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pending += [int(c) for c in children]
    return total


def model_cpu_ms(repository: Path, request: Body, seconds: float) -> float:
    """Median ms of one request's batch in raw ONNX Runtime (CPU, one thread)."""
    model = load_model(repository / "feed_ranker")
    assert model.card is not None
    session = raw_ort.open_session(model.onnx_path, "cpu", 1)
    encoder = FeatureEncoder.from_card(model.card.features)
    tensors = raw_ort.encode_batch(encoder, [request])
    return float(raw_ort.measure(session, tensors, seconds)["p50_ms"])


def measure(case: Case, bank: Bank, repository: Path, seconds: float, log: Path,
            server_cpu: str) -> tuple[int, float]:
    """(answered, server CPU ms per answered request) for one steady window."""
    settings = {"workers": str(case.workers), "providers": "CPUExecutionProvider",
                "default_budget_ms": "1000"}
    with GatewayProcess(log, repository, settings, cpus=server_cpu) as gateway:
        url = f"{gateway.url}/v1/rank"
        asyncio.run(offer(url, bank.shots, bank.content_type, case.rate, 2.0))  # warm up
        assert gateway.process is not None
        before = process_tree_cpu_s(gateway.process.pid)
        outcomes = asyncio.run(offer(url, bank.shots, bank.content_type, case.rate, seconds))
        after = process_tree_cpu_s(gateway.process.pid)
    answered = sum(1 for o in outcomes if o.status == 200)
    return answered, (after - before) * 1e3 / max(answered, 1)


def run(repository: Path, data: Path | None, seconds: float, repeats: int,
        server_cpu: str, client_cpu: str, out: Path) -> list[Result]:
    traffic = HeldOutTraffic.load(data, users=300)
    results = []
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        counts = CandidateCounts.fixed(case.candidates)
        bank = Bank.build(traffic, counts, 64, case.encoding)
        with pinned({int(c) for c in server_cpu.split(",")}):
            model_ms = model_cpu_ms(repository, traffic.requests(counts, 1)[0], 1.0)
        per_request = []
        answered = 0
        with pinned({int(c) for c in client_cpu.split(",")}):
            for _ in range(repeats):
                n, ms = measure(case, bank, repository, seconds, out / "gateway.log",
                                server_cpu)
                answered += n
                per_request.append(ms)
        server_ms = statistics.median(per_request)
        results.append(Result(case.label, answered, round(server_ms, 3), round(model_ms, 3),
                              round(server_ms - model_ms, 3)))
        print(f"{case.label}: server {server_ms:.3f} ms CPU/request, model {model_ms:.3f}, "
              f"gateway {server_ms - model_ms:.3f} ({answered} answered)", flush=True)
    return results


def to_markdown(results: Sequence[Result]) -> str:
    lines = ["| configuration | requests answered | server CPU ms/request | model ms/request "
             "(raw ORT) | gateway CPU ms/request |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.case} | {r.answered} | {r.server_cpu_ms:.3f} | {r.model_cpu_ms:.3f} | "
              f"{r.gateway_cpu_ms:.3f} |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.cpu",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per configuration")
    parser.add_argument("--server-cpu", default="0", help="cores the gateway is pinned to")
    parser.add_argument("--client-cpu", default="1", help="cores the load generator uses")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--data", type=Path, default=None, help="KuaiRand folder")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = run(args.model_repository, args.data, args.seconds, args.repeats,
                  args.server_cpu, args.client_cpu, args.results / f"cpu-{stamp}")
    (args.results / "gateway_cpu.json").write_text(
        json.dumps([asdict(r) for r in results], indent=1) + "\n")
    (args.results / "gateway_cpu.md").write_text(
        f"# Gateway CPU per request ({stamp})\n\n{to_markdown(results)}")
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
