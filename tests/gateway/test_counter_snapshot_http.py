"""Counter snapshot over HTTP: a model whose schema has counters, served from a repository
version holding its ``counters.npz``. A request without counters scores exactly like the
same request carrying the snapshot's values; a request's own values override them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.client import RankClient
from serving.repository.counters import SNAPSHOT_FILE, CounterSnapshot, pack_keys
from serving.repository.schema import Schema
from serving.train.data import load_log
from serving.train.export import export_repository
from serving.train.pipeline import run_training, save_checkpoint
from serving.train.trainer import TrainConfig
from tests.gateway.conftest import GatewayFactory
from tests.gateway.test_rank import post

pytestmark = pytest.mark.slow
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "serving" / "train" / "schemas" / \
    "kuairand.yaml"
MODEL = "counters_http"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained counters model, exported with its snapshot (behaviour, not AUC)."""
    log = load_log()
    result = run_training(log, TrainConfig(epochs=1, threads=1, max_steps=15), progress=False,
                          limit_rows=20_000, schema=Schema.load(SCHEMA_FILE))
    root = tmp_path_factory.mktemp("counters")
    save_checkpoint(result, root / "run")
    export_repository(root / "run", root / "repo", log, name=MODEL, parity_candidates=200)
    return root / "repo"


def with_snapshot_values(document: dict[str, Any], snapshot: CounterSnapshot
                         ) -> dict[str, Any]:
    """``document`` carrying every counter value the snapshot would join in."""
    user = dict(document["user"])
    candidates = [dict(c) for c in document["candidates"]]
    for table in snapshot.tables:
        if table.key == ("user_id",):
            row = table.lookup(np.array([user["user_id"]], dtype=np.int64))[0]
            user.update({n: float(v) for n, v in zip(table.features, row, strict=True)})
            continue
        columns = [np.array([user["user_id"]] * len(candidates) if k == "user_id"
                            else [c.get(k, -1) for c in candidates], dtype=np.int64)
                   for k in table.key]
        values = table.lookup(*pack_keys(columns))
        for c, row in zip(candidates, values, strict=True):
            c.update({n: float(v) for n, v in zip(table.features, row, strict=True)})
    return {**document, "user": user, "candidates": candidates}


def probs(answer: dict[str, Any]) -> dict[int, list[float]]:
    by_task = answer["probs"]
    return {v: [by_task[t][i] for t in sorted(by_task)]
            for i, v in enumerate(answer["video_id"])}


async def test_snapshot_values_equal_a_request_without_counters(
        start_gateway: GatewayFactory, repository: Path, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(model_repository=repository, default_model=MODEL)
    snapshot = CounterSnapshot.load(repository / MODEL / "1" / SNAPSHOT_FILE)
    joined_any = False
    for document in heldout[:8]:
        base = {**document, "return_tasks": True, "budget_ms": 5000}
        status, plain = await post(gateway, base)
        assert status == 200, plain
        assert "ignored_features" not in plain
        carried = with_snapshot_values(base, snapshot)
        status, explicit = await post(gateway, carried)
        assert status == 200, explicit
        assert probs(plain) == probs(explicit)  # exactly: the same values reach the model
        joined_any |= carried["user"]["user_count"] > 0
    assert joined_any  # some of these users are in the snapshot, not all priors
    async with RankClient(gateway.url) as client:  # numpy columns (binary) join the same
        binary = await client.rank({**heldout[0], "budget_ms": 5000}, return_tasks=True,
                                   encoding="binary")
    _, plain = await post(gateway, {**heldout[0], "return_tasks": True, "budget_ms": 5000})
    as_dict = {"video_id": binary.video_id.tolist(),
               "probs": {t: v.tolist() for t, v in binary.probs.items()}}
    got, want = probs(as_dict), probs(plain)
    assert got.keys() == want.keys()
    for video, row in got.items():
        np.testing.assert_allclose(row, want[video], rtol=0, atol=1e-7)


async def test_request_values_override_the_snapshot(
        start_gateway: GatewayFactory, repository: Path, heldout: list[dict[str, Any]]) -> None:
    gateway = await start_gateway(model_repository=repository, default_model=MODEL)
    document = {**max(heldout[:50], key=lambda d: len(d["candidates"])),
                "return_tasks": True, "budget_ms": 5000}
    _, plain = await post(gateway, document)
    heavy = {**document, "user": {**document["user"], "user_count": 500.0,
                                  "user_is_like_rate": 0.5},
             "candidates": [{**c, "video_is_click_rate": 0.99} for c in document["candidates"]]}
    status, overridden = await post(gateway, heavy)
    assert status == 200, overridden
    before, after = probs(plain), probs(overridden)
    assert before.keys() == after.keys()
    assert all(before[v] != after[v] for v in before)
    status, bad = await post(gateway, {**document, "user": {**document["user"],
                                                            "user_count": "many"}})
    assert status == 400
    assert bad["error"]["field"] == "user.user_count"
