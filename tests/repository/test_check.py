"""``rankserve check-repo``: accepts the committed repository, rejects each kind of breakage."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.cli import main
from serving.ranking.features import USER_NUMERIC
from serving.repository.check import check_repository

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODEL = "feed_ranker"
USER_NUM = len(USER_NUMERIC)  # the committed graph's user_num width


@pytest.fixture
def broken_copy(tmp_path: Path) -> Path:
    """A private copy of the committed repository that a test may break."""
    copy = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, copy)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture text {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def test_committed_repository_passes(capsys: pytest.CaptureFixture[str]) -> None:
    models, problems = check_repository(REPOSITORY)
    assert problems == []
    assert MODEL in models
    assert main(["check-repo", str(REPOSITORY)]) == 0
    assert f"OK, {len(models)} model(s)" in capsys.readouterr().out


def _misspell_field(repo: Path) -> None:
    _edit(repo / MODEL / "config.pbtxt", "max_batch_size: 0", "max_batch_sise: 0")


def _dtype_mismatch(repo: Path) -> None:
    _edit(repo / MODEL / "config.pbtxt",
          '{ name: "user_num", data_type: TYPE_FP32', '{ name: "user_num", data_type: TYPE_INT64')


def _renamed_input(repo: Path) -> None:
    _edit(repo / MODEL / "config.pbtxt", '{ name: "item_cat",', '{ name: "item_cats",')


def _wrong_dims(repo: Path) -> None:
    _edit(repo / MODEL / "config.pbtxt", '"history", data_type: TYPE_INT64, dims: [ -1, 20 ]',
          '"history", data_type: TYPE_INT64, dims: [ -1, 30 ]')


def _wrong_checksum(repo: Path) -> None:
    card_path = repo / MODEL / "1" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["onnx_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))


def _card_dtype(repo: Path) -> None:
    card_path = repo / MODEL / "1" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["outputs"][0]["dtype"] = "FP16"
    card_path.write_text(json.dumps(card))


def _warmup_input(repo: Path) -> None:
    _edit(repo / MODEL / "config.pbtxt", 'key: "item_to_user"', 'key: "item_2_user"')


@pytest.mark.parametrize(("breakage", "messages"), [
    (_misspell_field, ["feed_ranker/config.pbtxt:",
                       'has no field named "max_batch_sise"']),
    (_dtype_mismatch, ["feed_ranker/config.pbtxt: input 'user_num' has dtype TYPE_INT64 but "
                       "feed_ranker/1/model.onnx has TYPE_FP32"]),
    (_renamed_input, ["feed_ranker/config.pbtxt: input 'item_cats' is not an input of "
                      "feed_ranker/1/model.onnx",
                      "feed_ranker/config.pbtxt: input 'item_cat' of feed_ranker/1/model.onnx "
                      "is missing"]),
    (_wrong_dims, ["feed_ranker/config.pbtxt: input 'history' has dims [-1, 30] but "
                   "feed_ranker/1/model.onnx has [-1, 20]"]),
    (_wrong_checksum, ["feed_ranker/1/model_card.json: onnx_sha256 " + "0" * 64
                       + " does not match model.onnx (sha256 "]),
    (_card_dtype, ["feed_ranker/1/model_card.json: output 'probs' has dtype TYPE_FP16 but "
                   "model.onnx has TYPE_FP32"]),
    (_warmup_input, ["model_warmup 'one_request_300_candidates' input 'item_2_user' is not a "
                     "model input"]),
], ids=["misspelled-field", "dtype", "renamed-input", "dims", "checksum", "card-dtype",
        "warmup"])
def test_broken_copies_are_rejected_with_a_precise_message(
        broken_copy: Path, capsys: pytest.CaptureFixture[str],
        breakage: Callable[[Path], None], messages: list[str]) -> None:
    breakage(broken_copy)
    _, problems = check_repository(broken_copy)
    for message in messages:
        assert any(message in p for p in problems), (message, problems)
    assert main(["check-repo", str(broken_copy)]) == 1
    err = capsys.readouterr().err
    assert messages[0] in err


def test_missing_repository_is_an_error(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-repo", str(tmp_path / "nope")]) == 2
    assert "model repository not found" in capsys.readouterr().err


def _record_schema(repo: Path, edit: Callable[[dict[str, object]], None] | None = None) -> None:
    """Record the KuaiRand schema file in the card (as `rankserve export` does), edited."""
    from serving.repository.schema import Schema
    from serving.train.data import DEFAULT_SCHEMA_FILE

    card_path = repo / MODEL / "1" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["schema"] = Schema.load(DEFAULT_SCHEMA_FILE).to_dict()
    if edit is not None:
        edit(card["schema"])
    card_path.write_text(json.dumps(card))


def _drop_feature(name: str) -> Callable[[dict[str, object]], None]:
    def edit(schema: dict[str, object]) -> None:
        features = schema["features"]
        assert isinstance(features, list)
        features[:] = [f for f in features if f["name"] != name]
    return edit


def test_a_card_recording_its_schema_passes(broken_copy: Path) -> None:
    _record_schema(broken_copy)
    assert check_repository(broken_copy)[1] == []


@pytest.mark.parametrize(("edit", "message"), [
    (_drop_feature("register_days"),
     f"feed_ranker/1/model_card.json: the schema yields 'user_num' [rows, {USER_NUM - 1}], "
     f"the graph takes dims [-1, {USER_NUM}]"),
    (_drop_feature("history"),
     "feed_ranker/1/model_card.json: graph input 'history' follows from no feature of the "
     "schema"),
    (lambda s: s.update(name=""), "feed_ranker/1/model_card.json: schema: 'name' must be"),
    (lambda s: s["tasks"].reverse(),  # type: ignore[attr-defined]
     "feed_ranker/1/model_card.json: schema tasks ['profile_enter', 'forward'"),
], ids=["width", "no-history", "invalid", "tasks"])
def test_a_card_whose_schema_disagrees_with_the_graph_is_rejected(
        broken_copy: Path, edit: Callable[[dict[str, object]], None], message: str) -> None:
    _record_schema(broken_copy, edit)
    problems = check_repository(broken_copy)[1]
    assert any(message in p for p in problems), (message, problems)
