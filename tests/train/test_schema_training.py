"""Any team's schema through the real commands: ``rankserve train --schema`` on a small
generated log with every feature kind and transform, then ``rankserve export`` (ONNX parity
and ``check-repo``), and the model served from what export wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml

from serving.ranking.features import FeatureEncoder
from serving.repository.card import ModelCard
from serving.repository.check import check_model
from serving.repository.schema import Schema, schema_of_card
from serving.train.data import load_requests
from tests.train.test_cli_edge import rankserve

EVERY_KIND: dict[str, Any] = {
    "name": "every_kind",
    "features": [
        {"name": "user_id", "side": "user", "kind": "categorical_id", "id": True,
         "required": True},
        {"name": "user_country", "side": "user", "kind": "categorical_string"},
        {"name": "user_age", "side": "user", "kind": "numeric", "transform": "bucketize",
         "boundaries": [18, 30, 50]},
        {"name": "tenure", "side": "user", "kind": "numeric", "column": "user_tenure_days",
         "transform": "standardize", "default": 0},
        {"name": "surface", "side": "context", "kind": "categorical_string",
         "transform": "hash", "buckets": 16},
        {"name": "hour", "side": "context", "kind": "categorical_id", "min_count": 3},
        {"name": "history", "side": "user", "kind": "id_sequence", "length": 5,
         "vocabulary_of": "item_id"},
        {"name": "item_id", "side": "candidate", "kind": "categorical_id", "id": True,
         "required": True},
        {"name": "item_format", "side": "candidate", "kind": "categorical_string"},
        {"name": "creator_id", "side": "candidate", "kind": "categorical_id",
         "transform": "hash", "buckets": 50},
        {"name": "item_text_length", "side": "candidate", "kind": "numeric",
         "transform": "clip", "bounds": [0, 1000]},
        {"name": "item_duration_s", "side": "candidate", "kind": "numeric",
         "transform": "log1p_standardize"},
        {"name": "item_age_hours", "side": "candidate", "kind": "numeric",
         "transform": "log1p"},
        {"name": "raw_age", "side": "candidate", "kind": "numeric", "column": "item_age_hours",
         "transform": "identity"},
    ],
    "tasks": [{"name": "click"}, {"name": "dwell", "label": "long_dwell"}, {"name": "hide"}],
    "value_weights": {"click": 1.0, "dwell": 2.0, "hide": -3.0},
    "data": {"impressions": "multiformat_log.parquet",
             "request": {"keys": ["request_id"], "day": "day", "time": "ts"},
             "sequences": {"history": {"column": "history"}},
             "split": {"train": [1, 2, 3, 4, 5, 6], "test": [7, 8]}},
}


def test_train_and_export_any_schema(synthetic_dir: Path, tmp_path: Path) -> None:
    schema_file = tmp_path / "every_kind.yaml"
    schema_file.write_text(yaml.safe_dump(EVERY_KIND, sort_keys=False))
    run_dir, repository = tmp_path / "run", tmp_path / "repo"
    trained = rankserve("train", "--schema", str(schema_file), "--data", str(synthetic_dir),
                        "--run-dir", str(run_dir), "--max-steps", "30", "--no-progress",
                        "--threads", "1")
    assert trained.returncode == 0, trained.stderr
    assert (run_dir / "checkpoint.pt").is_file()
    exported = rankserve("export", "--run-dir", str(run_dir), "--data", str(synthetic_dir),
                         "--model-repository", str(repository), "--name", "every_kind",
                         "--parity-candidates", "300")
    assert exported.returncode == 0, exported.stderr
    model_dir = repository / "every_kind"
    assert check_model(model_dir) == []
    card = ModelCard.load(model_dir / "1" / "model_card.json")
    assert card.tasks == ["click", "dwell", "hide"]
    assert card.parity["max_abs_diff"] <= 1e-5
    assert card.parity["candidates"] >= 300
    schema = schema_of_card(card)
    assert schema == Schema.parse(EVERY_KIND)
    # the tensor rule: 3 user categoricals (country, surface, hour), 2 user numerics, ...
    assert [(i.name, i.shape) for i in card.inputs] == [
        ("user_id", (-1,)), ("user_cat", (-1, 3)), ("user_num", (-1, 2)),
        ("history", (-1, 5)), ("item_id", (-1,)), ("item_cat", (-1, 2)),
        ("item_num", (-1, 4)), ("item_to_user", (-1,))]

    # the exported files score a replayed request the way the encoder says
    encoder = FeatureEncoder.from_card(card.features, schema)
    body = load_requests(synthetic_dir, schema=schema, limit=1, min_candidates=3)[0]
    tensors = encoder.encode_request(body["user"], body["context"], body["history"],
                                     {k: [c.get(k) for c in body["candidates"]]
                                      for k in ("item_id", "item_format", "creator_id",
                                                "item_text_length", "item_duration_s",
                                                "item_age_hours", "raw_age")},
                                     len(body["candidates"]))
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], tensors)[0]
    assert probs.shape == (len(body["candidates"]), 3)
    assert np.isfinite(probs).all()
    assert json.loads((model_dir / "1" / "model_card.json").read_text())["schema"][
        "name"] == "every_kind"
