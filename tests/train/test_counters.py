"""Counting features: strictly from earlier rows (a property test), the prior for unseen
keys, the schema section's errors, and a smoke training + export with counters."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.repository.check import check_repository
from serving.repository.counters import SNAPSHOT_FILE, CounterSnapshot
from serving.repository.schema import Schema, SchemaError
from serving.train.counters import counter_frame, fit_priors, snapshot
from serving.train.data import Log
from serving.train.export import PARITY_TOLERANCE, export_repository
from serving.train.pipeline import run_training, save_checkpoint
from serving.train.trainer import TrainConfig

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "serving" / "train" / "schemas" / \
    "kuairand.yaml"
EVENTS = ["is_click", "is_like"]


def toy_schema(window: str = "daily") -> Schema:
    """Users, authors and videos with a user, an author and a user x author counter."""
    return Schema.parse({
        "name": "toy",
        "features": [
            {"name": "user_id", "side": "user", "kind": "categorical_id", "id": True},
            {"name": "video_id", "side": "candidate", "kind": "categorical_id", "id": True},
            {"name": "author_id", "side": "candidate", "kind": "categorical_id"}],
        "tasks": [{"name": "click", "label": "is_click"}, {"name": "like", "label": "is_like"}],
        "data": {"request": {"day": "date", "time": "time_ms"}},
        "counters": [
            {"name": "user", "key": "user_id", "events": EVENTS, "window": window,
             "prior": {"is_click": 0.4, "is_like": 0.05}, "prior_strength": 5},
            {"name": "author", "key": "author_id", "events": EVENTS, "window": window,
             "prior": {"is_click": 0.4, "is_like": 0.05}},
            {"name": "pair", "key": ["user_id", "author_id"], "events": EVENTS,
             "window": window, "prior": {"is_click": 0.4, "is_like": 0.05}}]})


ROWS = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(0, 5),
                          st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=40)


def frame_of(rows: list[tuple[int, int, int, int, int]]) -> pd.DataFrame:
    """(user, author, day, click, like) rows; time = day * 1000 + row number."""
    frame = pd.DataFrame(rows, columns=["user_id", "author_id", "date", "is_click", "is_like"])
    frame["time_ms"] = frame["date"] * 1000 + np.arange(len(frame)) % 7
    frame["video_id"] = frame["author_id"] * 10
    return frame


def window_of(frame: pd.DataFrame, window: str) -> pd.Series:
    return frame["date"] if window == "daily" else frame["time_ms"]


@settings(max_examples=60, deadline=None)
@given(rows=ROWS, later=ROWS, pivot=st.integers(0, 5), window=st.sampled_from(["daily", "row"]),
       drop=st.integers(0, 40), shift=st.integers(0, 3))
def test_no_later_row_changes_an_earlier_impression(
        rows: list[Any], later: list[Any], pivot: int, window: str, drop: int,
        shift: int) -> None:
    """Shifting, deleting, relabelling or adding rows at or after a point in time changes
    no counter of an impression before it; relabelling a day changes no daily counter of
    that day's own impressions."""
    schema = toy_schema(window)
    frame = frame_of(rows)
    point = pivot if window == "daily" else pivot * 1000 + 3
    earlier = window_of(frame, window) < point
    before = counter_frame(frame, schema)[earlier.to_numpy()]
    changed = frame[~earlier].copy()
    changed = changed.drop(changed.index[:drop % (len(changed) + 1)])
    changed["is_click"] = 1 - changed["is_click"]
    changed["date"] += shift
    changed["time_ms"] += shift * 1000
    added = frame_of(later)
    added.index += 1000
    added["date"] += 6
    added["time_ms"] += 6000
    mutated = pd.concat([frame[earlier], changed, added])
    after = counter_frame(mutated, schema).loc[before.index]
    pd.testing.assert_frame_equal(before, after)
    if window == "daily":
        same_day = (frame["date"] == pivot).to_numpy()
        relabelled = frame.copy()
        relabelled.loc[~earlier, ["is_click", "is_like"]] ^= 1
        pd.testing.assert_frame_equal(counter_frame(frame, schema)[same_day],
                                      counter_frame(relabelled, schema)[same_day])


@settings(max_examples=40, deadline=None)
@given(rows=ROWS, window=st.sampled_from(["daily", "row"]))
def test_counts_are_the_earlier_rows_of_the_key(rows: list[Any], window: str) -> None:
    """The vectorised counters equal a plain loop over earlier rows, rates smoothed."""
    schema = toy_schema(window)
    frame = frame_of(rows)
    got = counter_frame(frame, schema)
    at = window_of(frame, window).to_numpy()
    for i in range(len(frame)):
        mine = (frame["author_id"] == frame["author_id"][i]) & \
            (frame["user_id"] == frame["user_id"][i])
        prior = (at < at[i]) & mine.to_numpy()
        n, clicks = prior.sum(), frame["is_click"].to_numpy()[prior].sum()
        assert got["pair_count"][i] == n
        assert got["pair_is_click_count"][i] == clicks
        assert got["pair_is_click_rate"][i] == pytest.approx((clicks + 20 * 0.4) / (n + 20))
        user_prior = (at < at[i]) & (frame["user_id"] == frame["user_id"][i]).to_numpy()
        likes = frame["is_like"].to_numpy()[user_prior].sum()
        assert got["user_is_like_rate"][i] == pytest.approx(
            (likes + 5 * 0.05) / (user_prior.sum() + 5))


def test_an_unseen_key_gets_the_prior() -> None:
    schema = toy_schema()
    frame = frame_of([(1, 1, 0, 1, 1), (1, 1, 1, 1, 0), (2, 2, 1, 0, 0)])
    got = counter_frame(frame, schema)
    first = got.iloc[0]  # nothing before the first day: every key is unseen
    assert first["user_count"] == 0
    assert first["user_is_click_rate"] == pytest.approx(0.4)
    assert first["pair_is_like_rate"] == pytest.approx(0.05)
    assert got.iloc[1]["user_is_click_rate"] == pytest.approx((1 + 5 * 0.4) / (1 + 5))
    taken = snapshot(frame, schema)
    user = taken.table("user")
    assert user.keys.tolist() == [1, 2]
    values = user.lookup(np.array([2, 99], dtype=np.int64))
    np.testing.assert_allclose(values[1], user.prior)  # 99 was never seen
    assert user.prior.tolist() == pytest.approx([0, 0, 0.4, 0, 0.05])
    np.testing.assert_allclose(values[0], [1, 0, 2 / 6, 0, 0.25 / 6], rtol=1e-6)


def test_a_missing_key_counts_as_unseen() -> None:
    frame = frame_of([(1, 1, 0, 1, 1), (1, 1, 1, 1, 1)]).astype({"author_id": float})
    frame.loc[1, "author_id"] = np.nan
    got = counter_frame(frame, toy_schema())
    assert got["author_count"].tolist() == [0, 0]
    assert got["user_count"].tolist() == [0, 1]


def test_snapshot_round_trips(tmp_path: Path) -> None:
    frame = frame_of([(1, 1, 0, 1, 1), (3, 2, 1, 1, 0), (1, 2, 1, 0, 0)])
    taken = snapshot(frame, toy_schema())
    taken.save(tmp_path / SNAPSHOT_FILE)
    loaded = CounterSnapshot.load(tmp_path / SNAPSHOT_FILE)
    for a, b in zip(taken.tables, loaded.tables, strict=True):
        assert (a.name, a.key, a.features) == (b.name, b.key, b.features)
        np.testing.assert_array_equal(a.keys, b.keys)
        np.testing.assert_array_equal(a.values, b.values)
    assert loaded.table("pair").keys.tolist() == sorted([(1 << 32) | 1, (3 << 32) | 2,
                                                         (1 << 32) | 2])


@pytest.mark.parametrize(("change", "field"), [
    (lambda c: c.update(key="nope"), "counters[0].key"),
    (lambda c: c.update(key=["user_id", "user_id"]), "counters[0].key"),
    (lambda c: c.update(events=["is_share"]), "counters[0].events"),
    (lambda c: c.update(window="weekly"), "counters[0].window"),
    (lambda c: c.update(prior_strength=0), "counters[0].prior_strength"),
    (lambda c: c.update(prior={"is_click": 1.5}), "counters[0].prior"),
    (lambda c: c.update(colour="red"), "counters[0].colour"),
    (lambda c: c.update(name="video_id"), "counters[0].name"),
])
def test_bad_counters_are_refused_naming_the_field(change: Any, field: str) -> None:
    raw = toy_schema().to_dict()
    if field.endswith(".name"):  # a produced name that collides with a declared feature
        raw["features"].append({"name": "video_id_count", "side": "candidate",
                                "kind": "numeric"})
    change(raw["counters"][0])
    with pytest.raises(SchemaError) as e:
        Schema.parse(raw)
    assert e.value.field == field


def test_counter_features_are_numerics_on_their_side() -> None:
    schema = Schema.load(SCHEMA_FILE)
    assert schema.feature("user_is_like_rate").side == "user"
    assert schema.feature("user_author_is_click_count").side == "candidate"
    assert schema.feature("video_count").transform == "log1p_standardize"
    widths = {name: width for name, _, width in schema.inputs()}
    assert (widths["user_num"], widths["item_num"]) == (4 + 7, 4 + 21)
    assert Schema.parse(schema.to_dict()) == schema  # the card's copy parses back the same


def test_priors_are_fitted_on_the_training_rows() -> None:
    schema = toy_schema()
    raw = schema.to_dict()
    for c in raw["counters"]:
        c.pop("prior")
    bare = Schema.parse(raw)
    frame = frame_of([(1, 1, 0, 1, 0), (2, 1, 0, 0, 0), (2, 1, 0, 1, 1), (1, 2, 0, 1, 0)])
    fitted = fit_priors(bare, frame)
    assert fitted.counters[0].prior == pytest.approx({"is_click": 0.75, "is_like": 0.25})
    with pytest.raises(ValueError, match="fit_priors"):
        counter_frame(frame, bare)


@pytest.mark.slow
def test_smoke_training_with_counters_exports_model_and_snapshot(
        log: Log, tmp_path: Path) -> None:
    schema = Schema.load(SCHEMA_FILE)
    result = run_training(log, TrainConfig(epochs=1, threads=1), progress=False,
                          limit_rows=20_000, schema=schema)
    assert result.metrics["click"]["auc"] > 0.6
    assert result.encoder.schema.counters[0].prior  # fitted, recorded in the card
    assert "test_frozen_counters" in result.training["evaluation"]
    save_checkpoint(result, tmp_path / "run")
    card = export_repository(tmp_path / "run", tmp_path / "repo", log, name="counters_smoke",
                             parity_candidates=500)
    version = tmp_path / "repo" / "counters_smoke" / "1"
    assert card.parity["max_abs_diff"] <= PARITY_TOLERANCE
    assert check_repository(tmp_path / "repo") == (["counters_smoke"], [])
    taken = CounterSnapshot.load(version / SNAPSHOT_FILE)
    assert [t.name for t in taken.tables] == ["user", "author", "video", "user_author"]
    assert card.training["counters"]["keys"]["user"] == len(taken.table("user").keys) > 1000
    # The snapshot holds the training days' totals: a user's count is its training rows.
    user = taken.table("user")
    days = log.impressions["date"]
    rows = log.impressions[(days >= 20220425) & (days <= 20220504)]
    busiest = rows["user_id"].value_counts()
    got = user.lookup(np.array(busiest.index[:5], dtype=np.int64))
    np.testing.assert_array_equal(got[:, 0], busiest.to_numpy()[:5])
    assert dataclasses.asdict(card)["schema"]["counters"][0]["name"] == "user"
