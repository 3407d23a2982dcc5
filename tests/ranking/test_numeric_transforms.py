"""Numeric transforms clip and bucketize: their values, their card round trip, and the
parse errors naming the field when a transform or its parameters do not fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serving.ranking.features import FeatureEncoder
from serving.repository.schema import Schema, SchemaError


def schema_with(*numerics: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "features": [
        {"name": "user_id", "side": "user", "kind": "categorical_id", "id": True},
        {"name": "item_id", "side": "candidate", "kind": "categorical_id", "id": True},
        *({"side": "candidate", "kind": "numeric", **n} for n in numerics)],
        "tasks": ["click"]}


def fitted(raw: dict[str, Any], values: dict[str, list[float]]) -> FeatureEncoder:
    schema = Schema.parse(raw)
    n = len(next(iter(values.values())))
    return FeatureEncoder.fit(schema, {"user_id": [1] * n, "item_id": list(range(n)),
                                       **values})


def test_clip_bounds_then_standardises_with_the_clipped_training_values() -> None:
    enc = fitted(schema_with({"name": "x", "transform": "clip", "bounds": [0, 10]}),
                 {"x": [-5.0, 0.0, 5.0, 10.0, 50.0]})
    stats = enc.numeric["x"]
    clipped = np.array([0.0, 0.0, 5.0, 10.0, 10.0])
    assert stats.mean == pytest.approx(clipped.mean())
    assert stats.std == pytest.approx(clipped.std())
    out = enc.encode_items({"item_id": [1, 2, 3], "x": [-100.0, 5.0, 1e9]}, 3)["item_num"][:, 0]
    expected = (np.array([0.0, 5.0, 10.0]) - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_clip_with_one_open_side() -> None:
    enc = fitted(schema_with({"name": "x", "transform": "clip", "bounds": [None, 3]}),
                 {"x": [1.0, 2.0, 3.0]})
    out = enc.numeric["x"].transform([-7.0, 99.0], 2)
    stats = enc.numeric["x"]
    np.testing.assert_allclose(out, (np.array([-7.0, 3.0]) - stats.mean) / stats.std,
                               rtol=1e-6)


def test_bucketize_gives_the_bucket_index_lower_boundary_inclusive() -> None:
    raw = schema_with({"name": "age", "transform": "bucketize", "boundaries": [18, 25, 35]},
                      {"name": "d", "transform": "log1p"})
    enc = fitted(raw, {"age": [20.0, 40.0], "d": [1.0, 2.0]})
    out = enc.encode_items({"item_id": [0] * 6, "age": [3.0, 18.0, 24.9, 25.0, 35.0, None],
                            "d": [0.0] * 6}, 6)["item_num"]
    # None takes the training median (30): bucket 2; the mixed group uses the column path
    assert out[:, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 3.0, 2.0]
    assert out[:, 1].tolist() == [0.0] * 6


def test_transforms_survive_the_card_round_trip() -> None:
    raw = schema_with({"name": "a", "transform": "clip", "bounds": [1, 4]},
                      {"name": "b", "transform": "bucketize", "boundaries": [0.5]})
    enc = fitted(raw, {"a": [0.0, 2.0, 9.0], "b": [0.0, 1.0, 2.0]})
    again = FeatureEncoder.from_card(enc.to_card(), enc.schema.to_dict())
    items = {"item_id": [0, 1], "a": [7.0, 0.0], "b": [0.5, 0.4]}
    np.testing.assert_array_equal(again.encode_items(items, 2)["item_num"],
                                  enc.encode_items(items, 2)["item_num"])
    assert Schema.parse(enc.schema.to_dict()) == enc.schema


@pytest.mark.parametrize(("feature", "field", "words"), [
    ({"kind": "categorical_id", "transform": "bucketize", "side": "candidate"},
     "features[2].transform", "does not fit kind categorical_id"),
    ({"transform": "clip"}, "features[2].bounds", "needed by, and only by, transform: clip"),
    ({"transform": "standardize", "bounds": [0, 1]}, "features[2].bounds", "only by"),
    ({"transform": "clip", "bounds": [5, 1]}, "features[2].bounds", "low < high"),
    ({"transform": "clip", "bounds": [None, None]}, "features[2].bounds", "low < high"),
    ({"transform": "clip", "bounds": [0, 1, 2]}, "features[2].bounds", "low < high"),
    ({"transform": "clip", "bounds": "0..1"}, "features[2].bounds", "list [low, high]"),
    ({"transform": "bucketize"}, "features[2].boundaries", "transform: bucketize"),
    ({"transform": "bucketize", "boundaries": [1, 1]}, "features[2].boundaries",
     "strictly increasing"),
    ({"transform": "bucketize", "boundaries": [1, "x"]}, "features[2].boundaries",
     "finite numbers"),
    ({"transform": "log1p", "boundaries": [1]}, "features[2].boundaries", "only by"),
    ({"transform": "squash"}, "features[2].transform", "does not fit kind numeric"),
])
def test_transform_errors_name_the_field(feature: dict[str, Any], field: str,
                                         words: str) -> None:
    with pytest.raises(SchemaError) as err:
        Schema.parse(schema_with({"name": "x", **feature}))
    assert err.value.field == field
    assert words in err.value.message
    assert "(x)" in err.value.message  # the feature's name, beside its index
