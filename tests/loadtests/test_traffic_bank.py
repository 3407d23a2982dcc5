"""Real held-out traffic, the pre-encoded bank and the response check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from loadtests.bank import ENCODINGS, Bank, Shot, check_response
from loadtests.traffic import CandidateCounts, HeldOutTraffic
from serving.train.data import TEST_DAYS
from serving.wire import columns as columns_codec


@pytest.fixture(scope="module")
def traffic() -> HeldOutTraffic:
    return HeldOutTraffic.load(users=200, seed=1)


def test_candidate_counts_follow_the_clipped_log_normal() -> None:
    counts = CandidateCounts().sample(np.random.default_rng(0), 4000)
    assert counts.min() >= 50
    assert counts.max() <= 2000
    assert 270 <= np.median(counts) <= 330
    assert (counts == 2000).any()
    assert (counts == 50).any()
    assert set(CandidateCounts.fixed(500).sample(np.random.default_rng(0), 10)) == {500}


def test_requests_are_real_held_out_users_with_their_own_impressions_first(
        traffic: HeldOutTraffic) -> None:
    requests = traffic.requests(CandidateCounts(), 20, seed=3)
    by_id = {u["request_id"]: u for u in traffic.users}
    for request in requests:
        ids = request["candidates"]["video_id"]
        assert len(set(ids)) == len(ids)
        assert set(ids) <= set(traffic.pool_ids.tolist())
        assert set(request["candidates"]) >= {"video_id", "author_id", "duration_ms"}
        base = by_id[request["request_id"].rsplit("-", 1)[0]]
        assert request["user"] == base["user"]
        assert request["context"] == base["context"]
        own = list(dict.fromkeys(row["video_id"] for row in base["candidates"]))
        assert ids[:len(own)] == own[:len(ids)]
        assert int(base["request_id"].split("-")[1]) in TEST_DAYS
        assert request["history"] == base["history"]


def test_bank_round_trips_for_every_encoding(traffic: HeldOutTraffic, tmp_path: Path) -> None:
    for encoding in ENCODINGS:
        bank = Bank.build(traffic, CandidateCounts(median=80, low=50, high=200), 4, encoding,
                          top_k=30)
        bank.save(tmp_path / encoding)
        loaded = Bank.load(tmp_path / encoding)
        assert [s.body for s in loaded.shots] == [s.body for s in bank.shots]
        assert loaded.content_type == bank.content_type
        assert [s.rows for s in loaded.shots] == [s.rows for s in bank.shots]
        assert all(s.expected == 30 for s in loaded.shots)
    binary = Bank.load(tmp_path / "binary")
    header, columns = columns_codec.decode(binary.shots[0].body)
    assert sorted(columns["video_id"].tolist()) == binary.shots[0].ids.tolist()
    assert header["top_k"] == 30


def _answer(ids: list[int], scores: list[float]) -> bytes:
    return orjson.dumps({"request_id": "r", "model": {"name": "m", "version": 1},
                         "degraded": False, "video_id": ids, "score": scores})


def test_response_check_accepts_a_complete_ranking_and_names_each_defect() -> None:
    shot = Shot(b"", 3, np.array([1, 2, 3]), None)
    assert check_response(200, _answer([2, 3, 1], [0.9, 0.5, 0.5]), shot) is None
    error = orjson.dumps({"error": {"code": "overloaded", "message": "full"}})
    assert check_response(429, error, shot) == "HTTP 429: overloaded"
    assert "incomplete" in str(check_response(200, _answer([2, 3], [0.9, 0.5]), shot))
    assert "unranked" in str(check_response(200, _answer([2, 3, 1], [0.1, 0.5, 0.4]), shot))
    assert "not sent" in str(check_response(200, _answer([2, 3, 9], [0.9, 0.5, 0.4]), shot))
    assert "repeats" in str(check_response(200, _answer([2, 2, 1], [0.9, 0.5, 0.4]), shot))
    assert "not a ranking" in str(check_response(200, b"<html>", shot))
    top = Shot(b"", 3, np.array([1, 2, 3]), 2)
    assert check_response(200, _answer([3, 1], [0.9, 0.1]), top) is None
