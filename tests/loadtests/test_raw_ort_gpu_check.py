"""Raw ONNX Runtime throughput and the GPU check script, on this CPU-only machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from loadtests.bench import raw_ort

ROOT = Path(__file__).resolve().parents[2]


def test_raw_ort_measures_batches_shaped_like_the_batcher_without_data() -> None:
    result = raw_ort.run(ROOT / "model_repository", "feed_ranker", "cpu", 1, candidates=200,
                         seconds=0.05, data=str(ROOT / "no-such-data"), batch_rows=1000)
    assert [b["rows"] for b in result["batches"]] == [200, 400, 800, 1000]
    assert [b["requests"] for b in result["batches"]] == [1, 2, 4, 5]
    assert result["inputs"].startswith("synthetic")
    assert result["limit_rows_per_s"] == max(b["rows_per_s"] for b in result["batches"]) > 0
    assert result["session_providers"] == ["CPUExecutionProvider"]


def test_gpu_check_script_degrades_cleanly_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run([str(ROOT / "loadtests" / "bench" / "gpu_check.sh"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "CPUExecutionProvider" in result["providers"]["available"]
    if "CUDAExecutionProvider" not in result["providers"]["available"]:
        assert "no GPU provider" in result["benchmark"]["skipped"]
        assert "benchmark skipped" in done.stdout
    if not result["telemetry"]["available"]:
        assert "no GPU" in result["telemetry"]["reason"]
    assert (tmp_path / "nvidia-smi.txt").is_file()
