"""The committed config.pbtxt says what the issue asks, as Triton's own protobuf reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from serving.errors import ModelCardError
from serving.ranking.features import MODEL_INPUTS, USER_INPUTS
from serving.repository.card import ModelCard
from serving.repository.config import WARMUP_CANDIDATES, parse_config, render_config

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker"


@pytest.fixture(scope="module")
def config() -> mc.ModelConfig:
    return parse_config(MODEL_DIR / "config.pbtxt")


def test_serving_choices(config: mc.ModelConfig) -> None:
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0
    assert [i.name for i in config.input] == list(MODEL_INPUTS)
    assert [o.name for o in config.output] == ["probs"]
    gpu = mc.ModelInstanceGroup.KIND_GPU
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, gpu)]
    trt = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in trt] == ["tensorrt"]
    assert trt[0].parameters["precision_mode"] == "FP16"
    assert config.version_policy.latest.num_versions == 1


def test_max_batch_size_zero_is_explained() -> None:
    text = (MODEL_DIR / "config.pbtxt").read_text()
    before = text[:text.index("max_batch_size: 0")]
    assert "dynamic batcher" in before
    assert "item_to_user" in before


def test_warmup_starts_with_one_request_with_realistic_candidates(
        config: mc.ModelConfig) -> None:
    sample = config.model_warmup[0]  # then the TensorRT profile points (test_tensorrt_config)
    assert set(sample.inputs) == set(MODEL_INPUTS)
    for name, spec in sample.inputs.items():
        rows = 1 if name in USER_INPUTS else WARMUP_CANDIDATES
        assert spec.dims[0] == rows, name


def test_rendered_config_matches_the_card() -> None:
    card = ModelCard.load(MODEL_DIR / "1" / "model_card.json")
    assert render_config(card, USER_INPUTS) == (MODEL_DIR / "config.pbtxt").read_text()


def test_parse_error_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "x"\nplatfrom: "onnxruntime_onnx"\n')
    with pytest.raises(ModelCardError, match=r"2:1 .*has no field named \"platfrom\""):
        parse_config(path)
