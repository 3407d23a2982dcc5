"""The counter join: snapshot values for what a request lacks, request values win, the
prior for unknown or missing ids, errors naming the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.errors import InvalidFeature, ModelCardError
from serving.ranking.counters import CounterJoin
from serving.repository.counters import SNAPSHOT_FILE, CounterSnapshot, CounterTable
from serving.repository.schema import Schema

EVENTS = ["is_click"]


def schema() -> Schema:
    return Schema.parse({
        "name": "toy",
        "features": [
            {"name": "user_id", "side": "user", "kind": "categorical_id", "id": True},
            {"name": "video_id", "side": "candidate", "kind": "categorical_id", "id": True},
            {"name": "author_id", "side": "candidate", "kind": "categorical_id"}],
        "tasks": [{"name": "click", "label": "is_click"}],
        "counters": [
            {"name": "user", "key": "user_id", "events": EVENTS, "prior": {"is_click": 0.5}},
            {"name": "pair", "key": ["user_id", "author_id"], "events": EVENTS,
             "prior": {"is_click": 0.5}}]})


NAMES = ("count", "is_click_count", "is_click_rate")


def table(name: str, key: tuple[str, ...], keys: list[int], base: float) -> CounterTable:
    values = np.array([[base + k, k, 0.1 * (i + 1)] for i, k in enumerate(keys)], np.float32)
    return CounterTable(name, key, tuple(f"{name}_{n}" for n in NAMES),
                        np.array(keys, dtype=np.int64), values,
                        np.array([0, 0, 0.5], dtype=np.float32))


@pytest.fixture
def join(tmp_path: Path) -> CounterJoin:
    pairs = sorted([(7 << 32) | 3, (7 << 32) | 4, (8 << 32) | 3])
    snapshot = CounterSnapshot((table("user", ("user_id",), [5, 7], 100.0),
                                table("pair", ("user_id", "author_id"), pairs, 0.0)))
    snapshot.save(tmp_path / SNAPSHOT_FILE)  # through the file format, as a server reads it
    return CounterJoin.of(CounterSnapshot.load(tmp_path / SNAPSHOT_FILE), schema())


def test_missing_counters_come_from_the_snapshot(join: CounterJoin) -> None:
    user, items = join.fill({"user_id": 7}, {"video_id": [1, 2, 3], "author_id": [3, 9, 4]}, 3)
    assert (user["user_count"], user["user_is_click_rate"]) == (107.0, pytest.approx(0.2))
    np.testing.assert_allclose(items["pair_count"], [(7 << 32) | 3, 0, (7 << 32) | 4])
    np.testing.assert_allclose(items["pair_is_click_rate"], [0.1, 0.5, 0.2], rtol=1e-6)
    assert items["video_id"] == [1, 2, 3]  # the request's own columns are untouched
    assert set(items) == {"video_id", "author_id", "pair_count", "pair_is_click_count",
                          "pair_is_click_rate"}


def test_request_values_win_per_row(join: CounterJoin) -> None:
    user, items = join.fill({"user_id": 7, "user_count": 1.5},
                            {"video_id": [1, 2], "author_id": [3, 4],
                             "pair_is_click_rate": [0.9, None]}, 2)
    assert user["user_count"] == 1.5
    assert user["user_is_click_count"] == 7.0  # the others still joined
    np.testing.assert_allclose(items["pair_is_click_rate"], [0.9, 0.2], rtol=1e-6)


def test_unknown_or_missing_ids_get_the_prior(join: CounterJoin) -> None:
    user, items = join.fill({"user_id": 6}, {"video_id": [1, 2, 3],
                                             "author_id": [3, None, -1]}, 3)
    assert [user[f"user_{n}"] for n in NAMES] == [0.0, 0.0, 0.5]
    np.testing.assert_allclose(items["pair_is_click_rate"], [0.5, 0.5, 0.5])
    user, items = join.fill({}, {"video_id": [1]}, 1)  # no user id, no author column
    assert user["user_is_click_rate"] == 0.5
    np.testing.assert_allclose(items["pair_count"], [0.0])


def test_a_request_carrying_every_counter_is_left_alone(join: CounterJoin) -> None:
    candidates = {"video_id": [1], "author_id": [3],
                  **{f"pair_{n}": [1.0] for n in NAMES}}
    user, items = join.fill({"user_id": 7, **{f"user_{n}": 2.0 for n in NAMES}}, candidates, 1)
    assert items is candidates
    assert user["user_count"] == 2.0


def test_bad_values_are_refused_naming_the_field(join: CounterJoin) -> None:
    with pytest.raises(InvalidFeature) as e:
        join.fill({"user_id": 7}, {"video_id": [1], "author_id": ["x"]}, 1)
    assert e.value.field == "candidates.author_id"
    with pytest.raises(InvalidFeature) as e:
        join.fill({"user_id": 7}, {"video_id": [1], "author_id": [3],
                                   "pair_count": ["many"]}, 1)
    assert e.value.field == "candidates.pair_count"


def test_a_snapshot_of_other_counters_is_refused() -> None:
    other = CounterSnapshot((table("video", ("video_id",), [1], 0.0),))
    with pytest.raises(ModelCardError, match="video"):
        CounterJoin.of(other, schema())


def test_a_table_with_no_keys_gives_every_id_the_prior() -> None:
    """A counter nobody triggered in the training days (an empty table) still loads, and
    every lookup, valid or not, is the prior row."""
    prior = np.array([0.25, 0.5], dtype=np.float32)
    table = CounterTable("user", ("user_id",), ("user_count", "user_is_click_rate"),
                         np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.float32), prior)
    got = table.lookup(np.array([3, 7], dtype=np.int64), np.array([True, False]))
    np.testing.assert_array_equal(got, np.stack([prior, prior]))
