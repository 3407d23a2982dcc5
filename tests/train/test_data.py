"""The KuaiRand loader: temporal split, leak-free histories, replayable /v1/rank requests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.ranking.features import HISTORY_LENGTH
from serving.train.data import (
    DATA_FILES,
    TEST_DAYS,
    TRAIN_DAYS,
    DataNotFound,
    Log,
    group_requests,
    load_requests,
    resolve_data_dir,
)


def test_missing_data_names_every_expected_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKSERVE_DATA", str(tmp_path))
    with pytest.raises(DataNotFound) as err:
        resolve_data_dir()
    for name in DATA_FILES:
        assert name in str(err.value)
    assert "RANKSERVE_DATA" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_split_is_temporal(log: Log) -> None:
    train, test = log.days(TRAIN_DAYS).impressions, log.days(TEST_DAYS).impressions
    assert train["date"].max() == 20220504
    assert test["date"].min() == 20220505
    assert set(train["date"]) == set(TRAIN_DAYS)
    assert set(test["date"]) == set(TEST_DAYS)
    assert len(train) + len(test) == len(log.impressions)


def test_raw_features_are_derived_as_documented(log: Log) -> None:
    frame = log.impressions
    assert (frame["age_days"] >= 0).all()
    assert frame["hour"].between(0, 23).all()
    assert (frame["hour"] == frame["hourmin"] // 100).all()
    assert frame["tag"].dropna().apply(float.is_integer).all()  # the first of "39,68"


def test_history_is_strictly_earlier_clicks_most_recent_last(log: Log) -> None:
    grouped = group_requests(log.days(TEST_DAYS[:1]))
    clicks = log.clicks
    rng = np.random.default_rng(0)
    checked = 0
    for i in rng.choice(len(grouped), 300, replace=False):
        user, t = grouped.requests.loc[i, ["user_id", "time_ms"]]
        earlier = clicks[(clicks["user_id"] == user) & (clicks["time_ms"] < t)]
        expected = earlier.sort_values("time_ms", kind="stable")["video_id"].tolist()
        assert grouped.histories[i] == expected[-HISTORY_LENGTH:]
        checked += bool(expected)
    assert checked > 50  # the sample really exercised non-empty histories


def test_requests_are_json_bodies_of_real_held_out_impressions(log: Log) -> None:
    bodies = load_requests(days=TEST_DAYS[:1], limit=50, min_candidates=3)
    assert len(bodies) == 50
    ids = {b["request_id"] for b in bodies}
    assert len(ids) == 50
    body = json.loads(json.dumps(bodies[0]))  # JSON-ready: plain ints, floats, strings
    assert set(body) == {"request_id", "user", "context", "history", "candidates"}
    assert isinstance(body["user"]["user_id"], int)
    assert set(body["context"]) == {"tab", "hour"}
    assert len(body["candidates"]) >= 3
    assert all(isinstance(c["video_id"], int) for c in body["candidates"])
    day = log.days(TEST_DAYS[:1]).impressions
    shown = day[day["user_id"] == body["user"]["user_id"]]["video_id"].tolist()
    assert sorted(c["video_id"] for c in body["candidates"]) == sorted(shown)
