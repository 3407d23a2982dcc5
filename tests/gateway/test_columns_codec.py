"""The binary request encoding round-trips, and malformed bodies are 400s naming the field."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from serving.errors import BadRequest
from serving.ranking.features import FeatureEncoder
from serving.repository.card import ModelCard
from serving.wire import columns as columns_codec
from serving.wire.columns import DictColumn
from tests.gateway.conftest import RANKER


def test_round_trip_keeps_values_and_missing_markers() -> None:
    body = columns_codec.encode({"user": {"user_id": 7}, "top_k": 3}, {
        "video_id": [5, 6, 7], "duration_ms": [1.5, None, 3.0],
        "video_type": ["AD", None, "NORMAL"], "tag": np.array([1, 2, 3], dtype=np.int32)})
    header, columns = columns_codec.decode(body)
    assert header == {"user": {"user_id": 7}, "top_k": 3}
    assert columns["video_id"].dtype == np.int64
    assert columns["video_id"].tolist() == [5, 6, 7]
    assert np.isnan(columns["duration_ms"][1])
    assert columns["tag"].dtype == np.int32
    strings = columns["video_type"]
    assert isinstance(strings, DictColumn)
    assert [None if c < 0 else strings.values[c] for c in strings.codes] == ["AD", None, "NORMAL"]


def test_dictionary_columns_encode_like_plain_strings() -> None:
    card = ModelCard.load(RANKER / "model_card.json")
    vocabulary = FeatureEncoder.from_card(card.features).vocabularies["video_type"]
    raw = ["NORMAL", None, "AD", "never-seen", "NORMAL"]
    values = ["AD", "NORMAL", "never-seen"]
    codes = np.array([1, -1, 0, 2, 1], dtype=np.int32)
    np.testing.assert_array_equal(vocabulary.lookup(DictColumn(values, codes), 5),
                                  vocabulary.lookup(raw, 5))


def body_with(header: dict[str, object], payload: bytes) -> bytes:
    text = orjson.dumps(header)
    prefix = struct.pack("<4sI", b"RSC1", len(text)) + text
    return prefix + b"\0" * (-len(prefix) % 8) + payload


@pytest.mark.parametrize(("body", "field"), [
    (b"RSC1", "body"),
    (struct.pack("<4sI", b"RSC1", 999) + b"{}", "body"),
    (struct.pack("<4sI", b"RSC1", 2) + b"[]", "header"),
    (body_with({"columns": []}, b""), "n"),
    (body_with({"n": 2}, b""), "columns"),
    (body_with({"n": 2, "columns": [{"name": "video_id", "dtype": "i2"}]}, b"\0" * 8),
     "candidates.video_id"),
    (body_with({"n": 2, "columns": [{"name": "video_id", "dtype": "i8"}]}, b"\0" * 8),
     "candidates.video_id"),
    (body_with({"n": 1, "columns": [{"name": "video_id", "dtype": "i8"}]}, b"\0" * 16),
     "body"),
    (body_with({"n": 1, "columns": [{"name": "video_type", "dtype": "dict", "values": ["A"]}]},
               np.array([3], np.int32).tobytes()), "candidates.video_type"),
    (body_with({"n": 1, "columns": [{"name": "video_type", "dtype": "dict", "values": [1]}]},
               np.array([0], np.int32).tobytes()), "candidates.video_type"),
    (body_with({"n": 1, "columns": [7]}, b""), "columns[0]"),
])
def test_malformed_bodies_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BadRequest) as raised:
        columns_codec.decode(body)
    assert raised.value.field == field
