"""Train on a small slice, checkpoint, export to ONNX and check parity on held-out requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from serving.repository.card import ModelCard, sha256_of
from serving.repository.check import check_repository
from serving.train.counters import attach_counters
from serving.train.data import TASKS, TEST_DAYS, Log, group_requests
from serving.train.dataset import EncodedSplit
from serving.train.export import PARITY_TOLERANCE, export_repository
from serving.train.pipeline import TrainResult, load_checkpoint, run_training, save_checkpoint
from serving.train.trainer import TrainConfig, predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(log: Log, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = run_training(log, TrainConfig(epochs=1, threads=1), progress=False,
                          limit_rows=20_000)
    _check_smoke(result)
    path = tmp_path_factory.mktemp("run")
    save_checkpoint(result, path)
    return path


def _check_smoke(result: TrainResult) -> None:
    assert result.training["train_candidates"] == 20_000
    assert result.training["steps"] >= 19
    assert set(result.metrics) >= {"click", "long_view"}
    # A minute of training on 20k rows already ranks clicks better than chance.
    assert result.metrics["click"]["auc"] > 0.6


def test_checkpoint_round_trip_predicts_identically(run_dir: Path, log: Log) -> None:
    model, encoder, saved = load_checkpoint(run_dir)
    assert saved["tasks"] == list(TASKS)
    assert encoder.schema.counters  # the default schema's: trained and saved with them
    days = attach_counters(log, encoder.schema).days(TEST_DAYS[:1])
    held_out = EncodedSplit.build(encoder, group_requests(days).head(500))
    first, second = predict(model, held_out), predict(model, held_out)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (held_out.n_items, len(TASKS))


def test_export_parity_and_repository(run_dir: Path, log: Log, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    card = export_repository(run_dir, repo, log, name="ranker_smoke", parity_candidates=1000)
    onnx_path = repo / "ranker_smoke" / "1" / "model.onnx"
    parity = card.parity
    assert parity["candidates"] >= 1000
    assert parity["requests"] >= 100  # many requests, batched together
    assert parity["max_abs_diff"] <= PARITY_TOLERANCE
    assert card.onnx_sha256 == sha256_of(onnx_path)
    assert ModelCard.load(onnx_path.parent / "model_card.json") == card
    graph = onnx.load(str(onnx_path)).graph
    assert card.opset >= 17
    leading = {i.name: i.type.tensor_type.shape.dim[0].dim_param for i in graph.input}
    assert leading["user_id"] == leading["history"] != leading["item_id"] == leading["item_to_user"]
    assert all(leading.values())  # every input has a dynamic (named) leading dimension
    assert check_repository(repo) == (["ranker_smoke"], [])
