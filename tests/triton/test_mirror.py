"""The python-backend mirror keeps the production signature and switches only the runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ModelCardError
from serving.localtriton.mirror import build_mirror
from serving.repository.config import parse_config


def test_mirror_keeps_signature_and_switches_to_python(toy_repository: Path,
                                                       tmp_path: Path) -> None:
    names = build_mirror(toy_repository, tmp_path / "mirror")
    assert names == ["feed_ranker"]
    source = parse_config(toy_repository / "feed_ranker" / "config.pbtxt")
    mirrored = parse_config(tmp_path / "mirror" / "feed_ranker" / "config.pbtxt")
    assert mirrored.backend == "python"
    assert not mirrored.platform
    assert list(mirrored.input) == list(source.input)
    assert list(mirrored.output) == list(source.output)
    assert mirrored.max_batch_size == 0
    assert [g.kind for g in mirrored.instance_group] == [mirrored.instance_group[0].KIND_CPU]
    version = tmp_path / "mirror" / "feed_ranker" / "1"
    assert (version / "model.onnx").resolve() == \
        (toy_repository / "feed_ranker" / "1" / "model.onnx").resolve()
    assert "TritonPythonModel" in (version / "model.py").read_text()


def test_mirror_of_a_repository_without_onnx_models_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src" / "other").mkdir(parents=True)
    (tmp_path / "src" / "other" / "config.pbtxt").write_text('backend: "python"\n')
    with pytest.raises(ModelCardError, match="no ONNX model"):
        build_mirror(tmp_path / "src", tmp_path / "mirror")
