"""Rollout report: reloads under steady load, and what shadow scoring measured.

``python -m loadtests.experiments.rollout`` (about 20 seconds):

1. builds a repository holding two genuinely different versions of the ranker
   (:func:`build_versions`: version 2 rescales the MMoE gate weights of version 1);
2. starts a gateway process (``rankserve serve``, embedded ONNX Runtime; see
   :mod:`loadtests.server`) with a 50/50 split between the versions, version 2 shadowing
   version 1's users, and the admin endpoints;
3. runs ``--clients`` closed-loop clients (:func:`loadtests.loadgen.closed_loop`) on real
   held-out requests for ``--seconds``, then reloads the repository ``--reloads`` times
   back to back under the same load;
4. reports requests and statuses (every one must be 200), latency p50/p99 in the steady
   phase and during the reloads, how long a reload took, and the shadow counters (scored,
   dropped by reason, mean score difference, top-k overlap, scraped from ``/metrics``).

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
import urllib.request
from collections import Counter
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnx
import orjson
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from loadtests import RESULTS
from loadtests.bank import Shot
from loadtests.loadgen import client_session, closed_loop, post_shots
from loadtests.server import GatewayProcess
from serving.repository.card import CARD_FILE, ONNX_FILE, ModelCard, sha256_of
from serving.train.data import load_requests

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODEL = "feed_ranker"
PERTURBED = "mmoe.gates.weight"
"""Version 2 rescales the MMoE gate weights: same inputs and outputs, different scores."""
TOKEN = "rollout-report"
GATEWAY_SETTINGS = {
    "providers": "CPUExecutionProvider", "default_budget_ms": "10000",
    "admin_enabled": "true", "admin_token": TOKEN,
    "rollout": json.dumps({MODEL: {"1": 50, "2": 50}}), "shadow": json.dumps({MODEL: 2})}
"""The gateway's ``RANKSERVE_*`` settings: a 50/50 split, version 2 in the shadow."""


def build_versions(root: Path) -> Path:
    """Version 1 (the committed model) and version 2 (its gate weights rescaled by a
    seeded uniform factor in [0, 2)) under ``root``, each a complete version folder with
    its model card (version and sha256 updated) and the same counter snapshot."""
    shutil.copytree(REPOSITORY / MODEL / "1", root / "1")
    shutil.copytree(root / "1", root / "2")
    graph = onnx.load(str(REPOSITORY / MODEL / "1" / ONNX_FILE))
    rng = np.random.default_rng(7)
    for i, tensor in enumerate(graph.graph.initializer):
        if tensor.name == PERTURBED:
            weights = numpy_helper.to_array(tensor)
            changed = weights * rng.uniform(0.0, 2.0, weights.shape).astype(weights.dtype)
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(changed, tensor.name))
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


def _percentiles(latencies_ms: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_ms)
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def run(clients: int, seconds: float, reloads: int) -> dict[str, Any]:
    """One run (see the module docstring); returns the figures.

    Raises:
        loadtests.server.GatewayError: the gateway did not start (with the end of its log).
        aiohttp.ClientResponseError: a reload was refused.
    """
    work = Path(tempfile.mkdtemp(prefix="rollout-report-"))
    try:
        repository = make_repository(work, [1, 2], build_versions(work / "versions"))
        shots = [Shot(orjson.dumps(document), len(document["candidates"]))
                 for document in load_requests(limit=400)]
        with GatewayProcess(work / "gateway.log", repository, GATEWAY_SETTINGS) as gateway:
            figures = asyncio.run(_measure(gateway.url, shots, clients, seconds, reloads))
            return {**figures, "shadow": _shadow(_scrape(gateway.url))}
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _measure(url: str, shots: list[Shot], clients: int, seconds: float,
                   reloads: int) -> dict[str, Any]:
    """Closed-loop load for ``seconds``, then ``reloads`` reloads back to back under it; a
    request belongs to the phase in which it was sent."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with client_session(max_in_flight=0, timeout_s=60.0) as session:
        load = asyncio.create_task(closed_loop(
            post_shots(session, f"{url}/v1/rank", shots, "application/json"), clients,
            stop=stop))
        try:
            await asyncio.sleep(seconds)
            reloading_from = loop.time()
            durations = [await _reload(session, url) for _ in range(reloads)]
        finally:
            stop.set()
            outcomes = await load
    return {"clients": clients, "statuses": dict(Counter(o.status for o in outcomes)),
            "steady": _percentiles([o.response_ms for o in outcomes
                                    if o.scheduled < reloading_from]),
            "reloading": _percentiles([o.response_ms for o in outcomes
                                       if o.scheduled >= reloading_from]),
            "reloads": reloads, "reload_s_median": round(float(np.median(durations)), 3),
            "reload_s_max": round(max(durations), 3)}


async def _reload(session: aiohttp.ClientSession, url: str) -> float:
    """``POST /admin/reload``; the seconds it took.

    Raises:
        aiohttp.ClientResponseError: the gateway refused it.
    """
    started = time.perf_counter()
    async with session.post(f"{url}/admin/reload",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        response.raise_for_status()
    return time.perf_counter() - started


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(url: str) -> Samples:
    """Every sample of the gateway's ``/metrics``, by name and label set."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5.0) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): float(sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _shadow(samples: Samples) -> dict[str, Any]:
    """Shadow counters and the mean comparison values, read off the gateway's metrics."""
    labels = {"model": MODEL, "version": "2"}

    def sample(name: str, extra: dict[str, str] | None = None) -> float:
        return samples.get((name, frozenset((extra if extra is not None else labels).items())),
                           0.0)

    scored = sample("rankserve_shadow_score_diff_count")
    dropped = {reason: sample("rankserve_shadow_dropped_total",
                              {"model": MODEL, "reason": reason})
               for reason in ("busy", "load", "not_loaded", "unavailable", "deadline_exceeded")}
    return {"scored": scored, "dropped": {r: n for r, n in dropped.items() if n},
            "mean_score_diff": sample("rankserve_shadow_score_diff_sum") / max(scored, 1.0),
            "mean_topk_overlap": sample("rankserve_shadow_topk_overlap_sum") / max(scored, 1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.experiments.rollout",
                                     description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reloads", type=int, default=10)
    args = parser.parse_args()
    figures = run(args.clients, args.seconds, args.reloads)
    out = RESULTS / "rollout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
