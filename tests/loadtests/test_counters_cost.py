"""The counters cost benchmark runs on the committed version against itself: every figure it
reports is there and positive, the join is timed for a version with a snapshot, and the
same version compared with itself costs about the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.bench.counters_cost import run

VERSION = Path(__file__).resolve().parents[2] / "model_repository" / "feed_ranker" / "1"


@pytest.mark.slow
def test_reports_model_join_and_encoding_cost_of_each_version() -> None:
    result = run([VERSION, VERSION], candidates=50, requests_per_batch=[1, 2], rounds=1,
                 seconds=0.05, threads=1)
    first, second = result["versions"]
    for version in (first, second):
        assert all(v["median"] > 0 for v in version["us_per_row"].values())
        assert version["join_us_per_request"] > 0
        assert set(version["encode_ms_per_request"]) == {"columns", "rows"}
        assert all(ms > 0 for ms in version["encode_ms_per_request"].values())
    assert set(second["ratio_to_first"]) == {"1", "2"}
    assert set(second["encode_ratio_to_first"]) == {"columns", "rows"}
