"""Rollout report: reloads under steady load, and what shadow scoring measured.

``python -m loadtests.rollout_report`` (about 20 seconds):

1. builds a repository holding two genuinely different versions of the ranker
   (:func:`build_versions`: version 2 rescales the MMoE gate weights of version 1);
2. starts a gateway in this process (embedded ONNX Runtime) with a 50/50 split between
   the versions, version 2 shadowing version 1's users, and the admin endpoints;
3. runs ``--clients`` closed-loop clients on real held-out requests for ``--seconds``, then
   reloads the repository ``--reloads`` times back to back under the same load;
4. reports requests and statuses (every one must be 200), latency p50/p99 in the steady
   phase and during the reloads, how long a reload took, and the shadow counters (scored,
   dropped by reason, mean score difference, top-k overlap).

Figures go to stdout and ``loadtests/results/rollout.json``. The tests in
``tests/rollout/`` use :func:`build_versions` and :func:`make_repository` for their models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
from aiohttp.test_utils import TestClient, TestServer
from onnx import numpy_helper

from serving.gateway.app import create_app
from serving.gateway.keys import METRICS
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard, sha256_of
from serving.settings import Settings
from serving.telemetry.metrics import Metrics
from serving.train.data import load_requests

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
MODEL = "feed_ranker"
PERTURBED = "mmoe.gates.weight"
"""Version 2 rescales the MMoE gate weights: same inputs and outputs, different scores."""
TOKEN = "rollout-report"


def build_versions(root: Path) -> Path:
    """Version 1 (the committed model) and version 2 (its gate weights rescaled by a
    seeded uniform factor in [0, 2)) under ``root``, each a complete version folder with
    its model card (version and sha256 updated)."""
    shutil.copytree(REPOSITORY / MODEL / "1", root / "1")
    graph = onnx.load(str(REPOSITORY / MODEL / "1" / ONNX_FILE))
    rng = np.random.default_rng(7)
    for i, tensor in enumerate(graph.graph.initializer):
        if tensor.name == PERTURBED:
            weights = numpy_helper.to_array(tensor)
            changed = weights * rng.uniform(0.0, 2.0, weights.shape).astype(weights.dtype)
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(changed, tensor.name))
    (root / "2").mkdir()
    onnx.save(graph, str(root / "2" / ONNX_FILE))
    card = ModelCard.load(REPOSITORY / MODEL / "1" / CARD_FILE)
    replace(card, version=2, onnx_sha256=sha256_of(root / "2" / ONNX_FILE)).save(
        root / "2" / CARD_FILE)
    return root


def set_policy(repository: Path, policy: str) -> None:
    """Rewrite the ranker's ``version_policy`` (Triton syntax, e.g. ``all {}``)."""
    config = repository / MODEL / "config.pbtxt"
    config.write_text(re.sub(r"version_policy: \{.*\}\n", f"version_policy: {{ {policy} }}\n",
                             config.read_text()))


def add_version(repository: Path, version: int, source: Path) -> None:
    """Copy a prepared version folder into ``repository`` (what a deploy does)."""
    shutil.copytree(source, repository / MODEL / str(version))


def make_repository(root: Path, versions: Collection[int], versions_dir: Path,
                    policy: str = "all {}") -> Path:
    """A copy of the committed repository holding ``versions`` of the ranker."""
    repository = root / "model_repository"
    (repository / MODEL).mkdir(parents=True)
    shutil.copy(REPOSITORY / MODEL / "config.pbtxt", repository / MODEL)
    for version in versions:
        add_version(repository, version, versions_dir / str(version))
    set_policy(repository, policy)
    return repository


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


async def run(clients: int, seconds: float, reloads: int) -> dict[str, Any]:
    """One run (see the module docstring); returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="rollout-report-"))
    try:
        repository = make_repository(work, [1, 2], build_versions(work / "versions"))
        documents = load_requests(limit=400)
        settings = Settings.load(None, model_repository=repository, port=0,
                                 providers=["CPUExecutionProvider"], default_budget_ms=10_000,
                                 admin_enabled=True, admin_token=TOKEN,
                                 rollout={MODEL: {"1": 50, "2": 50}}, shadow={MODEL: 2})
        app = create_app(settings)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            figures = await _measure(client, documents, clients, seconds, reloads)
            return {**figures, "shadow": _shadow(app[METRICS])}
        finally:
            await client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _measure(client: TestClient[Any, Any], documents: list[dict[str, Any]], clients: int,
                   seconds: float, reloads: int) -> dict[str, Any]:
    phase = "steady"
    latencies: dict[str, list[float]] = {"steady": [], "reloading": []}
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def user(offset: int) -> None:
        i = offset
        while not stop.is_set():
            started, current = time.perf_counter(), phase
            response = await client.post("/v1/rank", data=orjson.dumps(documents[i % len(
                documents)]), headers={"Content-Type": "application/json"})
            await response.read()
            statuses[response.status] += 1
            latencies[current].append(time.perf_counter() - started)
            i += clients

    tasks = [asyncio.create_task(user(c)) for c in range(clients)]
    await asyncio.sleep(seconds)
    phase = "reloading"
    durations = []
    for _ in range(reloads):
        started = time.perf_counter()
        response = await client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        response.raise_for_status()
        durations.append(time.perf_counter() - started)
    stop.set()
    await asyncio.gather(*tasks)
    return {"clients": clients, "statuses": dict(statuses),
            "steady": _percentiles(latencies["steady"]),
            "reloading": _percentiles(latencies["reloading"]),
            "reloads": reloads, "reload_s_median": round(float(np.median(durations)), 3),
            "reload_s_max": round(max(durations), 3)}


def _shadow(metrics: Metrics) -> dict[str, Any]:
    """Shadow counters and the mean comparison values, read off the gateway's registry."""
    labels = {"model": MODEL, "version": "2"}
    value = metrics.registry.get_sample_value

    def sample(name: str, extra: dict[str, str] | None = None) -> float:
        return value(name, extra if extra is not None else labels) or 0.0

    scored = sample("rankserve_shadow_score_diff_count")
    dropped = {reason: sample("rankserve_shadow_dropped_total",
                              {"model": MODEL, "reason": reason})
               for reason in ("busy", "load", "not_loaded", "unavailable", "deadline_exceeded")}
    return {"scored": scored, "dropped": {r: n for r, n in dropped.items() if n},
            "mean_score_diff": sample("rankserve_shadow_score_diff_sum") / max(scored, 1.0),
            "mean_topk_overlap": sample("rankserve_shadow_topk_overlap_sum") / max(scored, 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reloads", type=int, default=10)
    args = parser.parse_args()
    figures = asyncio.run(run(args.clients, args.seconds, args.reloads))
    out = ROOT / "loadtests" / "results" / "rollout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
