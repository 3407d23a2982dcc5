"""Cost per candidate row of model versions side by side, and of the counter join.

Raw ONNX Runtime (one session per version, ``--threads`` intra-op threads), the same real
held-out requests for every version, each encoded as the gateway does it (a version with
counters gets them from its snapshot through :class:`~serving.ranking.counters.CounterJoin`).
The versions are timed in alternating rounds, so a noisy neighbour on a shared machine hits
them alike; the figure to compare is the ratio within one run. The gateway's side is timed in
the same rounds: the join alone per request, and the join with the encoding (the gateway's
``Ranker.encode``) with candidates as list columns and as row-wise JSON.

    python -m loadtests.bench.counters_cost model_repository/feed_ranker/1 \
        model_repository/feed_ranker/2 --candidates 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.bank import candidate_rows
from loadtests.bench.raw_ort import encode_batch, measure, open_session
from loadtests.traffic import Body, CandidateCounts, HeldOutTraffic
from serving.ranking.features import columns_from_rows
from serving.ranking.ranker import Ranker, RankRequest
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard
from serving.repository.served import load_model


def _ranker(folder: Path) -> Ranker:
    """The gateway's encoder of the version (its counter join included)."""
    card = ModelCard.load(folder / CARD_FILE)
    return Ranker.from_model(load_model(folder.parent, int(folder.name)), card)


def _joined(ranker: Ranker, requests: Sequence[Body]) -> tuple[list[Body], float | None]:
    """The requests with the version's counters joined in (what the model is fed), and the
    join's mean seconds per request (``None`` without counters)."""
    if ranker.counters is None:
        return list(requests), None
    out, spent = [], 0.0
    for r in requests:
        n = len(r["candidates"]["video_id"])
        started = time.perf_counter()
        user, items = ranker.counters.fill(r["user"], r["candidates"], n)
        spent += time.perf_counter() - started
        out.append({**r, "user": user, "candidates": {k: list(items[k]) for k in items}})
    return out, spent / len(requests)


def _encode_ms(ranker: Ranker, requests: Sequence[Body], rows: Sequence[list[Body]] | None
               ) -> float:
    """Mean ms per request of the gateway's join and encoding, candidates as list columns
    (columnar JSON) or, with ``rows``, as row-wise JSON."""
    started = time.perf_counter()
    for i, r in enumerate(requests):
        n = len(r["candidates"]["video_id"])
        candidates = r["candidates"] if rows is None else columns_from_rows(rows[i], "item")
        ranker.encode(RankRequest(r["user"], candidates, n, r["context"], r["history"]))
    return (time.perf_counter() - started) / len(requests) * 1e3


def run(folders: Sequence[Path], candidates: int, requests_per_batch: Sequence[int],
        rounds: int, seconds: float, threads: int) -> dict[str, Any]:
    traffic = HeldOutTraffic.load(None, users=max(requests_per_batch))
    requests = traffic.requests(CandidateCounts.fixed(candidates), max(requests_per_batch))
    rows = [candidate_rows(r["candidates"]) for r in requests]
    versions = []
    for folder in folders:
        ranker = _ranker(folder)
        joined, join_s = _joined(ranker, requests)
        session = open_session(folder / ONNX_FILE, "cpu", threads)
        batches = {k: encode_batch(ranker.encoder, joined[:k]) for k in requests_per_batch}
        versions.append({"folder": str(folder), "session": session, "batches": batches,
                         "ranker": ranker,
                         "join_us_per_request": None if join_s is None else join_s * 1e6,
                         "us_per_row": {k: [] for k in requests_per_batch},
                         "encode_ms": {"columns": [], "rows": []}})
    for _ in range(rounds):
        for v in versions:
            for k, tensors in v["batches"].items():
                got = measure(v["session"], tensors, seconds)
                v["us_per_row"][k].append(1e6 / got["rows_per_s"])
            v["encode_ms"]["columns"].append(_encode_ms(v["ranker"], requests, None))
            v["encode_ms"]["rows"].append(_encode_ms(v["ranker"], requests, rows))
    report = []
    for v in versions:
        per_row = {str(k): {"median": float(np.median(x)), "min": float(min(x))}
                   for k, x in v["us_per_row"].items()}
        report.append({"folder": v["folder"], "us_per_row": per_row,
                       "join_us_per_request": v["join_us_per_request"],
                       "encode_ms_per_request": {form: float(np.median(x))
                                                 for form, x in v["encode_ms"].items()}})
    base = report[0]
    for r in report[1:]:
        r["ratio_to_first"] = {k: r["us_per_row"][k]["median"] / base["us_per_row"][k]["median"]
                               for k in base["us_per_row"]}
        r["encode_ratio_to_first"] = {
            form: r["encode_ms_per_request"][form] / base["encode_ms_per_request"][form]
            for form in base["encode_ms_per_request"]}
    return {"candidates_per_request": candidates, "threads": threads, "rounds": rounds,
            "seconds_per_measure": seconds, "versions": report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.counters_cost",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="version folders to compare")
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--requests", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.folders, args.candidates, args.requests, args.rounds, args.seconds,
                 args.threads)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
