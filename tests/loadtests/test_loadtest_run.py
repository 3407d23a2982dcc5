"""The real headless pipeline: gateway on 127.0.0.1, distributed Locust (a master and one
local worker) at a low constant rate, then the report files and their figures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("loadtest")
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.locust.run", "--shape", "constant", "--rate", "4",
         "--duration", "8", "--workers", "1", "--encoding", "binary",
         "--candidates-median", "100", "--candidates-max", "300", "--bank-size", "16",
         "--users", "100", "--budget-ms", "2000", "--results", str(results), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folders = list(results.iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def test_report_files_exist(run_folder: Path) -> None:
    for name in ("summary.json", "summary.md", "report.html", "locust_stats.csv",
                 "locust_stats_history.csv", "samples.csv", "metrics.csv"):
        assert (run_folder / name).stat().st_size > 0, name
    for name in ("latency_vs_load.png", "throughput_over_time.png", "gateway_metrics.png"):
        assert (run_folder / name).read_bytes().startswith(PNG_MAGIC), name


def test_summary_holds_sane_figures_and_no_failures(run_folder: Path) -> None:
    summary = json.loads((run_folder / "summary.json").read_text())
    totals = summary["totals"]
    assert 20 <= totals["requests"] <= 40  # 4 req/s for 8 s
    assert totals["failures"] == 0
    assert totals["error_rate"] == 0.0
    assert 0 < totals["p50_ms"] <= totals["p95_ms"] <= totals["p99_ms"] <= totals["max_ms"]
    assert totals["rows"] >= 50 * totals["requests"]
    assert summary["verdict"]["pass"]
    assert summary["gateway"]["batches"] > 0
    assert summary["gateway"]["mean_batch_rows"] >= 50
    markdown = (run_folder / "summary.md").read_text()
    assert "SLO verdict: PASS" in markdown
    assert "p99" in markdown


def test_worker_samples_reach_the_master(run_folder: Path) -> None:
    with (run_folder / "locust_stats.csv").open() as f:
        aggregated = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    with (run_folder / "samples.csv").open() as f:
        samples = list(csv.DictReader(f))
    assert int(aggregated["Request Count"]) == len(samples) > 0
    assert int(aggregated["Failure Count"]) == 0
    assert (run_folder / "locust-worker.log").is_file()


def test_report_can_be_rebuilt_from_the_run_folder(run_folder: Path) -> None:
    (run_folder / "summary.json").unlink()
    done = subprocess.run([sys.executable, "-m", "loadtests.locust.run", "--report",
                           str(run_folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((run_folder / "summary.json").read_text())["totals"]["requests"] > 0
