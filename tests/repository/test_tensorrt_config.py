"""config.pbtxt's TensorRT accelerator follows the model card: precision as its
parity.precision section supports, engine/timing caches, the shape profile of the GPU
buckets and warm-up samples at the profile points; check-repo catches each disagreement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from serving.repository.card import ModelCard
from serving.repository.check import check_model
from serving.repository.config import (
    CACHE_KEYS,
    parse_config,
    profile_points,
    render_config,
    tensorrt_precision,
)
from serving.repository.schema import schema_of_card
from serving.settings import PROFILES

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker"


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "feed_ranker"
    shutil.copytree(MODEL_DIR, copy)
    return copy


def set_fp16_support(model_dir: Path, supported: bool | None) -> None:
    card_path = model_dir / "1" / "model_card.json"
    raw = json.loads(card_path.read_text())
    if supported is None:
        del raw["parity"]["precision"]
    else:
        raw["parity"]["precision"]["fp16"]["supported"] = supported
    card_path.write_text(json.dumps(raw, indent=1) + "\n")


def test_the_committed_model_serves_fp16_with_caches_profile_and_warm_up() -> None:
    card = ModelCard.load(MODEL_DIR / "1" / "model_card.json")
    fp16 = card.parity["precision"]["fp16"]
    assert fp16["supported"]
    assert fp16["max_abs_diff"] <= 1e-3
    assert card.parity["precision"]["tf32"]["max_abs_diff"] <= 1e-3
    assert tensorrt_precision(card) == "FP16"
    assert check_model(MODEL_DIR) == []
    config = parse_config(MODEL_DIR / "config.pbtxt")
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.parameters["precision_mode"] == "FP16"
    assert {k: trt.parameters[k] for k in CACHE_KEYS} == CACHE_KEYS
    assert "item_id:8192" in trt.parameters["trt_profile_max_shapes"]
    assert len(config.model_warmup) == 1 + len(profile_points())


@pytest.mark.parametrize("supported", [False, None])
def test_fp16_config_without_the_cards_support_is_caught(model_copy: Path,
                                                         supported: bool | None) -> None:
    set_fp16_support(model_copy, supported)
    problems = check_model(model_copy)
    assert any("precision_mode FP16" in p and "supports FP32" in p for p in problems), problems


def test_a_config_rendered_from_a_card_without_fp16_support_runs_fp32(
        model_copy: Path) -> None:
    set_fp16_support(model_copy, False)
    card = ModelCard.load(model_copy / "1" / "model_card.json")
    text = render_config(card, schema_of_card(card).input_names("user"))
    (model_copy / "config.pbtxt").write_text(text)
    assert "precision_mode" not in text
    assert check_model(model_copy) == []


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('key: "trt_engine_cache_enable" value: "1"', 'key: "trt_engine_cache_enable" value: "0"',
     "trt_engine_cache_enable is '0'"),
    ("item_id:8192,", "item_id:4096,", "trt_profile_max_shapes"),
])
def test_cache_and_profile_disagreements_are_caught(model_copy: Path, old: str, new: str,
                                                    expected: str) -> None:
    path = model_copy / "config.pbtxt"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    problems = check_model(model_copy)
    assert any(expected in p for p in problems), problems


def test_a_warm_up_sample_missing_at_a_profile_point_is_caught(model_copy: Path) -> None:
    path = model_copy / "config.pbtxt"
    text = path.read_text()
    path.write_text(text.replace("dims: [ 8192 ]", "dims: [ 8000 ]")
                    .replace("dims: [ 8192, ", "dims: [ 8000, "))
    problems = check_model(model_copy)
    assert any("no model_warmup sample" in p and "max point" in p for p in problems), problems


def test_the_profile_spans_the_gpu_settings_buckets() -> None:
    rows, users = PROFILES["gpu"]["buckets"], PROFILES["gpu"]["user_buckets"]
    points = profile_points()
    assert points["max"] == (max(rows), max(users))
    assert points["opt"][0] in rows
    assert points["opt"][1] in users
    assert points["min"] == (1, 1)
