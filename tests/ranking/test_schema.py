"""The schema as data: parsing with errors naming the field, the tensor rule, the committed
card's schema, and the O(1) lookup tables against a sorted-search oracle."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.ranking.features import MODEL_INPUTS, USER_INPUTS, FeatureEncoder
from serving.ranking.lookup import HashBuckets, IntTable
from serving.repository.card import ModelCard
from serving.repository.schema import Feature, Schema, SchemaError, schema_of_card
from serving.train.data import DEFAULT_SCHEMA_FILE
from serving.wire.columns import DictColumn

IDS_SCHEMA_FILE = DEFAULT_SCHEMA_FILE.with_name("kuairand_ids.yaml")
CARD = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker" / "1" \
    / "model_card.json"


def raw_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DEFAULT_SCHEMA_FILE.read_text())
    return loaded


def test_kuairand_schema_yields_todays_tensor_names_and_widths() -> None:
    schema = Schema.load(DEFAULT_SCHEMA_FILE)
    assert schema.input_names() == MODEL_INPUTS
    assert schema.input_names("user") == USER_INPUTS
    card = ModelCard.load(CARD)
    widths = {name: width for name, _, width in schema.inputs()}
    for spec in card.inputs:
        assert (spec.shape[1] if len(spec.shape) == 2 else None) == widths[spec.name]


def test_card_without_schema_implies_the_schema_of_its_features() -> None:
    """A card written before schemas (the first feed_ranker's: no counters) has only its
    fitted ``features``; those imply kuairand_ids.yaml, so such a version still serves."""
    card = ModelCard.load(CARD)
    counters = Schema.load(DEFAULT_SCHEMA_FILE).counter_features()
    features = {**card.features, "numeric": [f for f in card.features["numeric"]
                                             if f["name"] not in counters]}
    legacy = dataclasses.replace(card, schema={}, features=features)
    implied, written = schema_of_card(legacy), Schema.load(IDS_SCHEMA_FILE)
    assert implied.inputs() == written.inputs()

    def shape(s: Schema) -> list[tuple[Any, ...]]:
        return sorted((f.name, f.side, f.kind, f.transform, f.required, f.id, f.length)
                      for f in s.features)
    assert shape(implied) == shape(written)
    assert [t.name for t in implied.tasks] == [t.name for t in written.tasks]
    assert implied.value_weights == written.value_weights


def test_schema_round_trips_through_its_dict_form() -> None:
    schema = Schema.load(DEFAULT_SCHEMA_FILE)
    assert Schema.parse(schema.to_dict()) == schema


def _broken(edit: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw_schema())
    edit(raw)
    return raw


@pytest.mark.parametrize(("edit", "field", "words"), [
    (lambda r: r["features"][2].update(kind="categorical"), "features[2].kind", "kind"),
    (lambda r: r["features"].append({"name": "tab", "side": "candidate",
                                     "kind": "categorical_id"}),
     "features[44].name", "declared twice"),
    (lambda r: r["features"][28].update(transform="hash"), "features[28].transform",
     "does not fit kind numeric"),
    (lambda r: r["features"][1].update(transform="log1p_standardize"),
     "features[1].transform", "does not fit"),
    (lambda r: r["tasks"][0].update(label=""), "tasks[0].label", "label column"),
    (lambda r: r["tasks"][0].pop("name"), "tasks[0].name", "name"),
    (lambda r: r["features"][3].update(colour="red"), "features[3].colour", "not a schema"),
    (lambda r: r["features"][32].update(vocabulary_of="tag_x"), "features[32].vocabulary_of",
     "vocabulary_of"),
    (lambda r: r["features"][32].pop("length"), "features[32].length", "length"),
    (lambda r: r["value_weights"].update(hide=1.0), "value_weights.hide", "names no task"),
    (lambda r: r["features"][1].update(default=3), "features[1].default", "numeric"),
    (lambda r: r["features"][33].update(id=False), "features", "id: true"),
])
def test_bad_schemas_are_refused_naming_the_field(edit: Any, field: str, words: str) -> None:
    with pytest.raises(SchemaError) as err:
        Schema.parse(_broken(edit))
    assert err.value.field == field
    assert words in err.value.message


def test_hashed_features_need_no_vocabulary_and_are_stable() -> None:
    feature = Feature("creator", "candidate", "categorical_string", "hash", buckets=1000)
    buckets = HashBuckets(feature)
    plain = buckets.lookup(["a", None, "b", "a"], 4)
    coded = buckets.lookup(DictColumn(["b", "a"], np.array([1, -1, 0, 1], np.int32)), 4)
    np.testing.assert_array_equal(plain, coded)
    assert plain[1] == 0
    assert plain[0] == plain[3]
    assert 1 <= plain[0] <= 1000
    ids = HashBuckets(Feature("x", "user", "categorical_id", "hash", buckets=7))
    out = ids.lookup(np.array([5, 5, -3, 2**40]), 4)
    assert out[0] == out[1]
    assert ((out >= 1) & (out <= 7)).all()


def _oracle(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """What the encoder did before: ``searchsorted`` on the sorted keys."""
    if not len(keys):
        return np.zeros(len(query), np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, pos + 1, 0).astype(np.int64)


@settings(max_examples=200, deadline=None)
@given(keys=st.sets(st.one_of(st.integers(-50, 5000), st.integers(-(2**62), 2**62)),
                    max_size=300),
       extra=st.lists(st.integers(-(2**62), 2**62), max_size=40), spread=st.booleans())
def test_int_tables_answer_like_a_sorted_search(keys: set[int], extra: list[int],
                                                spread: bool) -> None:
    ordered = sorted(keys | ({10**12, -(10**12)} if spread else set()))
    array = np.asarray(ordered, dtype=np.int64)
    table = IntTable(array)
    query = np.asarray([*ordered, *extra, *(k + 1 for k in ordered[:20]),
                        *(k - 1 for k in ordered[:20])], dtype=np.int64)
    query = query[np.abs(query) <= 2**62]
    np.testing.assert_array_equal(table.lookup(query), _oracle(array, query))


def test_wide_id_ranges_use_hashing_narrow_ones_a_direct_table() -> None:
    encoder = FeatureEncoder.from_card(ModelCard.load(CARD).features)
    tables = {name: v._table for name, v in encoder.vocabularies.items()
              if hasattr(v, "_table")}
    assert tables["user_id"].direct
    assert tables["video_id"].direct
    assert not tables["music_id"].direct
    assert not tables["author_id"].direct
    assert tables["music_id"].probes <= 3


def test_unknown_feature_names_are_reported_and_refused_in_strict_mode() -> None:
    from serving.errors import InvalidFeature

    encoder = FeatureEncoder.from_card(ModelCard.load(CARD).features)
    user, context = {"user_id": 1, "favourite_colour": "red"}, {"tab": 1, "weather": "rain"}
    candidates = {"video_id": [1], "author_id": [2], "item_format": ["live"]}
    assert encoder.unknown_features(user, context, candidates) == [
        "user.favourite_colour", "context.weather", "candidates.item_format"]
    assert encoder.unknown_features({"user_id": 1}, {}, {"video_id": [1]}) == []
    with pytest.raises(InvalidFeature) as err:
        encoder.refuse_unknown(user, context, candidates)
    assert err.value.field == "user.favourite_colour"
    assert "candidates.item_format" in err.value.message
    described = encoder.describe()
    assert described["inputs"] == list(MODEL_INPUTS)
    assert any(f["field"] == "history" and f["kind"] == "id_sequence"
               for f in described["features"])
    assert encoder.candidate_id == "video_id"


def test_extends_takes_the_base_file_and_replaces_its_top_level_keys(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(DEFAULT_SCHEMA_FILE.read_text())
    (tmp_path / "variant.yaml").write_text(
        "extends: base.yaml\nvalue_weights: {click: 2.0}\n")
    base, variant = Schema.load(tmp_path / "base.yaml"), Schema.load(tmp_path / "variant.yaml")
    assert variant.value_weights == {"click": 2.0}
    assert variant.features == base.features
    assert variant.tasks == base.tasks


@pytest.mark.parametrize("text", ["extends: 3\n", "extends: ''\n", "extends: loop.yaml\n"])
def test_extends_errors_name_the_field(tmp_path: Path, text: str) -> None:
    (tmp_path / "loop.yaml").write_text(text)
    with pytest.raises(SchemaError) as raised:
        Schema.load(tmp_path / "loop.yaml")
    assert raised.value.field == "extends"
