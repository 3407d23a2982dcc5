"""The benchmark's open-loop generator over real loopback HTTP, and py-spy digestion."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestServer

from loadtests.bank import Shot
from loadtests.bench.report import hot_frames
from loadtests.loadgen import ceiling_rps, open_loop, sink_app


async def test_open_loop_sends_on_schedule_and_counts_every_answer() -> None:
    async with TestServer(sink_app(2000), host="127.0.0.1") as server:
        url = str(server.make_url("/v1/rank"))
        bodies = [Shot(b"x" * 100, 7), Shot(b"y" * 50, 3)]
        point = await open_loop(url, bodies, "application/octet-stream", rate=100.0,
                                seconds=1.0, warmup_s=0.2)
        assert point.sent == 100
        assert point.ok == 100
        assert point.statuses == {"200": 100}
        assert point.rows_per_s == 500.0  # 50 bodies of 7 rows and 50 of 3
        assert point.p50_ms is not None
        assert point.p99_ms is not None
        assert point.p50_ms <= point.p99_ms
        assert point.within(p99_ms=1e9, max_error_rate=0.0)
        assert await ceiling_rps(url, bodies, "application/octet-stream", 4, 0.3) > 0


async def test_open_loop_reports_unanswered_requests_as_errors() -> None:
    async with TestServer(sink_app(), host="127.0.0.1") as server:
        url = str(server.make_url("/nowhere"))
        point = await open_loop(url, [Shot(b"x", 1)], "text/plain", rate=20.0, seconds=0.5,
                                warmup_s=0.0)
        assert point.ok == 0
        assert point.statuses == {"404": point.sent}
        assert point.p99_ms is None
        assert point.error_rate == 1.0
        assert not point.within(p99_ms=1e9, max_error_rate=0.5)


def test_hot_frames_ranks_self_and_inclusive_time(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text("main (a.py:1);work (/x/site-packages/pkg/w.py:5);run (ort.py:9) 30\n"
                   "main (a.py:1);parse (/p/serving/gateway/c.py:3) 10\n")
    lines = hot_frames(raw)
    assert lines[0] == "40 samples"
    assert lines[1] == "self  75.0%  run (ort.py:9)"
    assert "self  25.0%  parse (serving/gateway/c.py:3)" in lines
    assert "incl  75.0%  work (pkg/w.py:5)" in lines
