"""The feature encoder: raw JSON-like values -> model tensors, the contract of every input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from serving.errors import InvalidFeature, MissingFeature
from serving.ranking.features import (
    ALL_CATEGORICAL,
    ALL_NUMERIC,
    HISTORY_LENGTH,
    ITEM_CATEGORICAL,
    ITEM_NUMERIC,
    USER_CATEGORICAL,
    USER_NUMERIC,
    FeatureEncoder,
    columns_from_rows,
)
from serving.repository.schema import Schema
from serving.train.data import DEFAULT_SCHEMA_FILE

SCHEMA = Schema.load(DEFAULT_SCHEMA_FILE)


def _training_columns() -> dict[str, list[Any]]:
    """A tiny training set: every feature present, a few distinct values each."""
    rows = 6
    columns: dict[str, list[Any]] = {}
    for spec in ALL_CATEGORICAL:
        columns[spec.name] = ([f"v{i % 3}" for i in range(rows)] if spec.kind == "str"
                              else [10 * (i % 3) + 1 for i in range(rows)])
    columns["user_id"] = [100, 101, 102, 100, 101, 102]
    columns["video_id"] = [7, 8, 9, 7, 8, 9]
    for spec in ALL_NUMERIC:
        columns[spec.name] = [0.0, 1.0, 3.0, 7.0, 15.0, 31.0]
    return columns


@pytest.fixture(scope="module")
def encoder() -> FeatureEncoder:
    return FeatureEncoder.fit(SCHEMA, _training_columns())


def _user(**overrides: Any) -> dict[str, Any]:
    user: dict[str, Any] = {"user_id": 101, "user_active_degree": "v1", "follow_user_num": 3.0}
    user.update(overrides)
    return {k: v for k, v in user.items() if v is not ...}


def _encode_users(encoder: FeatureEncoder, users: list[dict[str, Any]],
                  histories: list[Any] | None = None) -> dict[str, np.ndarray]:
    return encoder.encode_users(columns_from_rows(users, "user"),
                                columns_from_rows([{"tab": 1, "hour": 11}] * len(users),
                                                  "context"),
                                histories or [[] for _ in users], len(users))


def test_json_values_become_tensors_of_the_contract_shapes(encoder: FeatureEncoder) -> None:
    users = _encode_users(encoder, [_user(), _user(user_id=100)], [[7, 8], [9]])
    items = encoder.encode_items(columns_from_rows(
        [{"video_id": 8, "author_id": 11, "video_type": "v2", "duration_ms": 7.0}] * 3, "item"), 3)
    assert users["user_id"].dtype == np.int64
    assert users["user_id"].shape == (2,)
    assert users["user_cat"].shape == (2, len(USER_CATEGORICAL))
    assert users["user_num"].dtype == np.float32
    assert users["user_num"].shape == (2, len(USER_NUMERIC))
    assert users["history"].shape == (2, HISTORY_LENGTH)
    assert items["item_cat"].shape == (3, len(ITEM_CATEGORICAL))
    assert items["item_num"].shape == (3, len(ITEM_NUMERIC))
    # Known values get ids 1..n in sorted order: user 100 -> 1, 101 -> 2; video 8 -> 2.
    assert users["user_id"].tolist() == [2, 1]
    assert items["item_id"].tolist() == [2, 2, 2]
    names = [s.name for s in ITEM_CATEGORICAL]
    assert items["item_cat"][0, names.index("author_id")] == 2  # author 11 is the 2nd of 1/11/21
    assert items["item_cat"][0, names.index("video_type")] == 3  # "v2" is the 3rd string
    # Numerics: log1p then standardised with the training constants.
    stats = encoder.numeric["duration_ms"]
    assert items["item_num"][0, 0] == pytest.approx((math.log1p(7.0) - stats.mean) / stats.std,
                                                    rel=1e-6)


def test_unknown_values_map_to_the_oov_id(encoder: FeatureEncoder) -> None:
    users = _encode_users(encoder, [_user(user_id=999_999, user_active_degree="never-seen")])
    assert users["user_id"].tolist() == [0]
    assert users["user_cat"][0, 0] == 0
    items = encoder.encode_items({"video_id": [123456], "tag": [77]}, 1)
    assert items["item_id"].tolist() == [0]
    assert items["item_cat"][0, [s.name for s in ITEM_CATEGORICAL].index("tag")] == 0


def test_missing_optional_values_take_documented_defaults(encoder: FeatureEncoder) -> None:
    absent = _encode_users(encoder, [_user(follow_user_num=..., user_active_degree=...)])
    null = _encode_users(encoder, [_user(follow_user_num=None, user_active_degree=None)])
    nan = _encode_users(encoder, [_user(follow_user_num=float("nan"))])
    stats = encoder.numeric["follow_user_num"]
    expected = (math.log1p(stats.default) - stats.mean) / stats.std
    assert stats.default == pytest.approx(5.0)  # the training median of 0,1,3,7,15,31
    for encoded in (absent, null, nan):
        assert encoded["user_num"][0, 0] == pytest.approx(expected, rel=1e-6)
    assert absent["user_cat"][0, 0] == 0
    assert null["user_cat"][0, 0] == 0


@pytest.mark.parametrize(("side", "rows", "field"), [
    ("user", [{"user_active_degree": "v1"}], "user.user_id"),
    ("user", [{"user_id": None}], "user.user_id"),
    ("item", [{"author_id": 1}], "candidates.video_id"),
])
def test_missing_required_feature_is_named(encoder: FeatureEncoder, side: str,
                                           rows: list[dict[str, Any]], field: str) -> None:
    def encode() -> object:
        if side == "user":
            return _encode_users(encoder, rows)
        return encoder.encode_items(columns_from_rows(rows, "item"), 1)

    with pytest.raises(MissingFeature) as err:
        encode()
    assert err.value.field == field
    assert field in err.value.message


@pytest.mark.parametrize(("column", "value", "field"), [
    ("video_id", "abc", "candidates.video_id"),
    ("video_id", 1.5, "candidates.video_id"),
    ("duration_ms", float("inf"), "candidates.duration_ms"),
    ("duration_ms", "long", "candidates.duration_ms"),
])
def test_invalid_values_are_rejected_with_the_field(encoder: FeatureEncoder, column: str,
                                                    value: Any, field: str) -> None:
    row: dict[str, Any] = {"video_id": 7, column: value}
    with pytest.raises(InvalidFeature) as err:
        encoder.encode_items(columns_from_rows([row], "item"), 1)
    assert err.value.field == field


def test_history_is_left_padded_most_recent_last_and_truncated(encoder: FeatureEncoder) -> None:
    long_history = [7, 8] * 15 + [9]  # 31 entries: only the last 20 are kept
    out = _encode_users(encoder, [_user(), _user(), _user()],
                        [[9, 12345, 7], long_history, []])["history"]
    assert out[0].tolist() == [0] * (HISTORY_LENGTH - 3) + [3, 0, 1]  # unknown 12345 -> 0
    assert out[1, -1] == 3
    assert (out[1] > 0).all()
    assert out[2].tolist() == [0] * HISTORY_LENGTH


def test_card_round_trip_encodes_identically(encoder: FeatureEncoder) -> None:
    again = FeatureEncoder.from_card(encoder.to_card())
    cols = _training_columns()
    items = {k: cols[k] for k in ("video_id", "author_id", "video_type", "duration_ms")}
    for name, value in encoder.encode_items(items, 6).items():
        np.testing.assert_array_equal(value, again.encode_items(items, 6)[name])
    assert again.cardinalities() == encoder.cardinalities()
