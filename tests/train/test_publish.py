"""Export publishes a checked version atomically as the next number, never half a version,
and replaces one only with --force. The versions are real: the committed model's files,
re-numbered, checked by the same code as ``rankserve check-repo``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.repository.check import check_repository
from serving.train.publish import PublishRefused, check_target, next_version, publish_version

COMMITTED = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker"
NAME = "feed_ranker"


def builder(version: int, *, corrupt: bool = False,
            fail: bool = False) -> Callable[[Path], str]:
    """A ``build`` that writes the committed model as ``version`` into the staging repository,
    as ``export_repository`` would (optionally a broken one, or failing midway)."""

    def build(staging: Path) -> str:
        model_dir = staging / NAME
        target = model_dir / str(version)
        target.mkdir(parents=True)
        shutil.copy(COMMITTED / "config.pbtxt", model_dir / "config.pbtxt")
        shutil.copy(COMMITTED / "1" / "model.onnx", target / "model.onnx")
        if fail:
            raise ValueError("ONNX/PyTorch parity 3.1e-04 exceeds 1e-05")
        card = json.loads((COMMITTED / "1" / "model_card.json").read_text())
        card["version"] = version
        if corrupt:
            card["onnx_sha256"] = "0" * 64
        (target / "model_card.json").write_text(json.dumps(card))
        return f"card v{version}"

    return build


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "model_repository"
    shutil.copytree(COMMITTED, repo / NAME)
    return repo


def listing(repository: Path) -> list[str]:
    return sorted(str(p.relative_to(repository)) for p in repository.rglob("*"))


def test_the_next_version_is_published_beside_the_old_one(repository: Path) -> None:
    assert next_version(repository / NAME) == 2
    version = check_target(repository, NAME, None, force=False)
    card, published = publish_version(repository, NAME, version, False, builder(version))
    assert (card, published.version, published.config_replaced) == ("card v2", 2, False)
    assert (repository / NAME / "1" / "model.onnx").is_file()
    assert (repository / NAME / "2" / "model_card.json").is_file()
    models, problems = check_repository(repository)
    assert (models, problems) == ([NAME], [])
    assert not [p for p in repository.iterdir() if p.name.startswith(".")]  # staging gone
    assert next_version(repository / NAME) == 3


def test_an_existing_version_is_refused_without_force(repository: Path) -> None:
    before = listing(repository)
    with pytest.raises(PublishRefused, match="exists: pass --force"):
        check_target(repository, NAME, 1, force=False)
    with pytest.raises(PublishRefused, match="export as version 2"):
        publish_version(repository, NAME, 1, False, builder(1))
    assert listing(repository) == before


def test_force_replaces_a_version_in_one_rename(repository: Path) -> None:
    old = (repository / NAME / "1" / "model_card.json").stat().st_ino
    _, published = publish_version(repository, NAME, 1, True, builder(1))
    assert published.path == repository / NAME / "1"
    assert (repository / NAME / "1" / "model_card.json").stat().st_ino != old
    assert check_repository(repository)[1] == []
    assert not [p for p in repository.iterdir() if p.name.startswith(".")]


def test_a_failed_parity_check_leaves_the_repository_unchanged(repository: Path) -> None:
    before = listing(repository)
    with pytest.raises(ValueError, match="parity"):
        publish_version(repository, NAME, 2, False, builder(2, fail=True))
    assert listing(repository) == before


def test_a_version_failing_check_repo_is_not_published(repository: Path) -> None:
    before = listing(repository)
    with pytest.raises(PublishRefused, match="sha256"):
        publish_version(repository, NAME, 2, False, builder(2, corrupt=True))
    assert listing(repository) == before


def test_the_operators_config_is_kept_when_the_new_version_fits_it(repository: Path) -> None:
    config = repository / NAME / "config.pbtxt"
    config.write_text(config.read_text().replace(
        "version_policy: { latest { num_versions: 1 } }", "version_policy: { all { } }"))
    assert "all { }" in config.read_text()
    _, published = publish_version(repository, NAME, 2, False, builder(2))
    assert not published.config_replaced
    assert "all { }" in config.read_text()  # both versions still served for the rollout


def test_a_first_export_creates_the_model(tmp_path: Path) -> None:
    repository = tmp_path / "fresh"
    version = check_target(repository, NAME, None, force=False)
    assert version == 1
    _, published = publish_version(repository, NAME, version, False, builder(1))
    assert published.config_replaced
    assert check_repository(repository) == ([NAME], [])
