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

``/v2`` binary rows send the same held-out requests as already-encoded tensors (the KServe
binary extension), so the row shows the cost of the gateway without feature encoding and
ranking. **50-candidate requests per second per core** is measured in a closed loop
(``CEILING_CONCURRENCY`` requests always in flight) against the gateway pinned to one core,
and also derived as 1,000 / server CPU ms per request (what one fully busy core would
answer); the load generator's own ceiling against a trivial sink bounds the first. Binary
``/v1/rank`` requests ask for binary answers (``Accept``), as :mod:`serving.client` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from loadtests import RESULTS
from loadtests.bank import Bank, Shot
from loadtests.bench import raw_ort
from loadtests.loadgen import ceiling_rps, offer
from loadtests.server import GatewayProcess, pinned
from loadtests.traffic import Body, CandidateCounts, HeldOutTraffic
from serving.client import ACCEPT_COLUMNS, Encoding
from serving.ranking.features import FeatureEncoder
from serving.repository.served import load_model

TICKS = os.sysconf("SC_CLK_TCK")
MODEL = "feed_ranker"
V2_HEADER_LENGTH = "Inference-Header-Content-Length"
CEILING_CONCURRENCY = 32
Route = Literal["v1", "v2"]


@dataclass(frozen=True)
class Case:
    candidates: int
    encoding: Encoding
    rate: float
    workers: int = 1
    route: Route = "v1"

    @property
    def label(self) -> str:
        workers = f", {self.workers} workers" if self.workers > 1 else ""
        route = "/v2 " if self.route == "v2" else ""
        return f"{self.candidates} cand, {route}{self.encoding}{workers}"


CASES = (
    Case(50, "binary", 300.0), Case(500, "binary", 80.0), Case(1000, "binary", 40.0),
    Case(500, "columnar", 80.0), Case(500, "json", 40.0),
    Case(500, "binary", 80.0, workers=2), Case(500, "binary", 80.0, route="v2"),
)


@dataclass
class Result:
    case: str
    answered: int
    server_cpu_ms: float
    model_cpu_ms: float
    gateway_cpu_ms: float
    extra: dict[str, float] = field(default_factory=dict)


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
    model = load_model(repository / MODEL)
    assert model.card is not None
    session = raw_ort.open_session(model.onnx_path, "cpu", 1)
    encoder = FeatureEncoder.from_card(model.card.features)
    tensors = raw_ort.encode_batch(encoder, [request])
    return float(raw_ort.measure(session, tensors, seconds)["p50_ms"])


def v2_bank(repository: Path, requests: Sequence[Body]) -> tuple[Bank, dict[str, str]]:
    """The same requests as ``/v2`` binary infer bodies (tensors already encoded), and the
    header every one of them needs.

    Each JSON header is padded with spaces to one length (JSON allows trailing blanks), so
    every body shares one ``Inference-Header-Content-Length``.
    """
    model = load_model(repository / MODEL)
    assert model.card is not None
    encoder = FeatureEncoder.from_card(model.card.features)
    datatypes = {t.name: t.dtype for t in model.inputs}
    parts = []
    for request in requests:
        tensors = raw_ort.encode_batch(encoder, [request])
        inputs = [{"name": name, "datatype": datatypes[name], "shape": list(value.shape),
                   "parameters": {"binary_data_size": value.nbytes}}
                  for name, value in tensors.items()]
        header = orjson.dumps({"inputs": inputs, "outputs": [
            {"name": "probs", "parameters": {"binary_data": True}}]})
        blobs = b"".join(np.ascontiguousarray(v).tobytes() for v in tensors.values())
        parts.append((header, blobs, len(request["candidates"]["video_id"])))
    width = max(len(h) for h, _, _ in parts)
    shots = tuple(Shot(h.ljust(width) + b, rows) for h, b, rows in parts)
    return (Bank("binary", "application/octet-stream", shots, f"{parts[0][2]} fixed"),
            {V2_HEADER_LENGTH: str(width)})


def measure(case: Case, bank: Bank, repository: Path, seconds: float, log: Path,
            server_cpu: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
    """(answered, server CPU ms per answered request) for one steady window."""
    settings = {"workers": str(case.workers), "providers": "CPUExecutionProvider",
                "default_budget_ms": "1000"}
    path = f"/v2/models/{MODEL}/infer" if case.route == "v2" else "/v1/rank"
    with GatewayProcess(log, repository, settings, cpus=server_cpu) as gateway:
        url = f"{gateway.url}{path}"
        asyncio.run(offer(url, bank.shots, bank.content_type, case.rate, 2.0,  # warm up
                          extra_headers=headers))
        assert gateway.process is not None
        before = process_tree_cpu_s(gateway.process.pid)
        outcomes = asyncio.run(offer(url, bank.shots, bank.content_type, case.rate, seconds,
                                     extra_headers=headers))
        after = process_tree_cpu_s(gateway.process.pid)
    answered = sum(1 for o in outcomes if o.status == 200)
    return answered, (after - before) * 1e3 / max(answered, 1)


def requests_per_core(bank: Bank, repository: Path, seconds: float, log: Path,
                      server_cpu: str) -> float:
    """Requests/s answered (200) with ``CEILING_CONCURRENCY`` in flight, gateway on one core."""
    settings = {"providers": "CPUExecutionProvider", "default_budget_ms": "1000"}
    with GatewayProcess(log, repository, settings, cpus=server_cpu.split(",")[0]) as gateway:
        url = f"{gateway.url}/v1/rank"
        asyncio.run(ceiling_rps(url, bank.shots, bank.content_type, CEILING_CONCURRENCY, 2.0))
        return asyncio.run(ceiling_rps(url, bank.shots, bank.content_type,
                                       CEILING_CONCURRENCY, seconds))


def run(repository: Path, data: Path | None, seconds: float, repeats: int,
        server_cpu: str, client_cpu: str, out: Path) -> list[Result]:
    traffic = HeldOutTraffic.load(data, users=300)
    results = []
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        counts = CandidateCounts.fixed(case.candidates)
        headers = None
        if case.route == "v2":
            bank, headers = v2_bank(repository, traffic.requests(counts, 64))
        else:
            bank = Bank.build(traffic, counts, 64, case.encoding)
            if case.encoding == "binary":  # binary answers too, as serving/client.py asks
                headers = {"Accept": ACCEPT_COLUMNS}
        with pinned({int(c) for c in server_cpu.split(",")}):
            model_ms = model_cpu_ms(repository, traffic.requests(counts, 1)[0], 1.0)
        per_request = []
        answered = 0
        with pinned({int(c) for c in client_cpu.split(",")}):
            for _ in range(repeats):
                n, ms = measure(case, bank, repository, seconds, out / "gateway.log",
                                server_cpu, headers)
                answered += n
                per_request.append(ms)
            extra = {}
            if case == CASES[0]:  # 50 candidates, binary: requests/s per core
                extra["closed_loop_rps"] = round(statistics.median(
                    requests_per_core(bank, repository, seconds, out / "gateway.log",
                                      server_cpu) for _ in range(repeats)), 1)
        server_ms = statistics.median(per_request)
        extra["cpu_bound_rps"] = round(1e3 / server_ms, 1)
        results.append(Result(case.label, answered, round(server_ms, 3), round(model_ms, 3),
                              round(server_ms - model_ms, 3), extra))
        print(f"{case.label}: server {server_ms:.3f} ms CPU/request, model {model_ms:.3f}, "
              f"gateway {server_ms - model_ms:.3f} ({answered} answered) {extra}", flush=True)
    return results


def to_markdown(results: Sequence[Result]) -> str:
    lines = ["| configuration | requests answered | server CPU ms/request | model ms/request "
             "(raw ORT) | gateway CPU ms/request |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.case} | {r.answered} | {r.server_cpu_ms:.3f} | {r.model_cpu_ms:.3f} | "
              f"{r.gateway_cpu_ms:.3f} |" for r in results]
    lines += ["", "| configuration | requests/s per core, closed loop | requests/s per core, "
              "1,000 / server CPU ms |", "|---|---:|---:|"]
    lines += [f"| {r.case} | {r.extra.get('closed_loop_rps', '-')} | "
              f"{r.extra.get('cpu_bound_rps', '-')} |" for r in results]
    return "\n".join(lines) + "\n"


def gateway_arguments(prog: str, doc: str, seconds: float, repeats: str
                      ) -> argparse.ArgumentParser:
    """The options every gateway-CPU benchmark takes (window, repeats, pinning, inputs)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=seconds,
                        help="measured seconds per window")
    parser.add_argument("--repeats", type=int, default=3, help=repeats)
    parser.add_argument("--server-cpu", default="0", help="cores the gateway is pinned to")
    parser.add_argument("--client-cpu", default="1", help="cores the load generator uses")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--data", type=Path, default=None, help="KuaiRand folder")
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser


def save_results(results_dir: Path, stem: str, title: str, rows: Sequence[Any],
                 markdown: str) -> None:
    """``stem.json`` (the rows, dataclasses as dicts) and ``stem.md`` (``# title`` and the
    tables) in ``results_dir``, and the tables on stdout."""
    payload = [asdict(r) for r in rows]
    (results_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (results_dir / f"{stem}.md").write_text(f"# {title}\n\n{markdown}")
    print(markdown)


def main(argv: Sequence[str] | None = None) -> int:
    args = gateway_arguments("python -m loadtests.bench.cpu", __doc__ or "", 5.0,
                             "windows per configuration").parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = run(args.model_repository, args.data, args.seconds, args.repeats,
                  args.server_cpu, args.client_cpu, args.results / f"cpu-{stamp}")
    save_results(args.results, "gateway_cpu", f"Gateway CPU per request ({stamp})", results,
                 to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
