"""The committed default model: its card is truthful and it ranks real held-out requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.metrics import roc_auc_score

from serving.ranking.features import MODEL_INPUTS, PROBS, columns_from_rows
from serving.ranking.ranker import Ranker, RankRequest
from serving.repository.card import ModelCard, sha256_of
from serving.repository.served import load_model
from serving.train.data import TASKS, TEST_DAYS, Log, group_requests, request_bodies
from serving.train.export import PARITY_TOLERANCE

VERSION_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker" / "1"


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return ModelCard.load(VERSION_DIR / "model_card.json")


def test_card_matches_the_committed_onnx_file(card: ModelCard) -> None:
    onnx_path = VERSION_DIR / "model.onnx"
    assert card.onnx_sha256 == sha256_of(onnx_path)
    assert onnx_path.stat().st_size < 20 * 1024 * 1024
    assert card.opset >= 17
    assert card.tasks == list(TASKS)
    assert [t.name for t in card.inputs] == list(MODEL_INPUTS)
    assert all(t.shape[0] == -1 for t in card.inputs)
    assert card.outputs[0].shape == (-1, len(TASKS))


def test_card_reports_metrics_baseline_and_parity(card: ModelCard) -> None:
    for source in (card.metrics["test"], card.metrics["baseline"]["test"]):
        assert set(source) == set(TASKS)
        assert all(0.5 < source[t]["auc"] < 1 and source[t]["logloss"] > 0 for t in TASKS)
    spread = card.metrics["seed_study"]["tasks"]
    assert all(len(spread[t]["auc"]["per_seed"]) >= 3 for t in TASKS)
    assert card.parity["max_abs_diff"] <= PARITY_TOLERANCE
    assert card.parity["candidates"] >= 1000
    assert card.parity["requests"] >= 100


@pytest.mark.slow
def test_committed_model_ranks_real_held_out_requests(card: ModelCard, log: Log) -> None:
    """The serving path end to end: JSON bodies without counters -> the version's counter
    snapshot joined in and the encoder from the card (the gateway's Ranker) -> ONNX
    Runtime, one session run over all the requests."""
    grouped = group_requests(log.days(TEST_DAYS[-1:]), by="day")
    bodies = request_bodies(grouped, range(1500))
    assert not any(f in bodies[0]["user"] for f in ("user_count", "user_is_click_rate"))
    ranker = Ranker.from_model(load_model(VERSION_DIR.parent, 1), card)
    assert ranker.counters is not None
    encoded = [ranker.encode(RankRequest(
        b["user"], columns_from_rows(b["candidates"], "item"), len(b["candidates"]),
        b["context"], b["history"])) for b in bodies]
    feeds = {name: np.concatenate([e[name] for e in encoded]) for name in MODEL_INPUTS}
    candidates = [c for b in bodies for c in b["candidates"]]
    feeds["item_to_user"] = np.repeat(np.arange(len(bodies)),
                                      [len(b["candidates"]) for b in bodies])
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    probs = session.run([PROBS], feeds)[0]
    assert probs.shape == (len(candidates), len(TASKS))
    assert ((probs > 0) & (probs < 1)).all()
    labels = grouped.head(1500).labels()
    assert roc_auc_score(labels[:, 0], probs[:, 0]) > 0.65  # click
    assert roc_auc_score(labels[:, 1], probs[:, 1]) > 0.65  # long view
