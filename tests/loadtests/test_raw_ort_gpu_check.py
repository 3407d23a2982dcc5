"""Raw ONNX Runtime throughput and the GPU check script, on this CPU-only machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from loadtests.bench import gpu_check, raw_ort

ROOT = Path(__file__).resolve().parents[2]


def test_raw_ort_measures_batches_shaped_like_the_batcher_without_data() -> None:
    result = raw_ort.run(ROOT / "model_repository", "feed_ranker", "cpu", 1, candidates=200,
                         seconds=0.05, data=str(ROOT / "no-such-data"), batch_rows=1000)
    assert [b["rows"] for b in result["batches"]] == [200, 400, 800, 1000]
    assert [b["requests"] for b in result["batches"]] == [1, 2, 4, 5]
    assert result["inputs"].startswith("synthetic")
    assert result["limit_rows_per_s"] == max(b["rows_per_s"] for b in result["batches"]) > 0
    assert result["session_providers"] == ["CPUExecutionProvider"]


def test_gpu_check_dry_run_completes_every_stage(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
           "GPU_CHECK_ARGS": "--cpu-dry-run"}
    done = subprocess.run([str(ROOT / "loadtests" / "bench" / "gpu_check.sh"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["cpu_dry_run"] is True
    stages = result["stages"]
    assert list(stages) == list(gpu_check.STAGES)
    for name, stage in stages.items():
        assert "failed" not in stage, (name, stage)
        assert "skipped" not in stage, (name, stage)
    assert "CPUExecutionProvider" in stages["environment"]["available"]
    assert stages["smoke"]["nodes_per_provider"]["CPUExecutionProvider"] > 0
    assert stages["parity"]["fp32"]["max_abs_dp"] == 0.0
    for mode in ("plain", "bound", "bucketed_bound"):
        assert all(p["rows_per_s"] > 0 for p in stages["raw"][mode]["points"])
    assert stages["raw"]["bound"]["pinned"] is False  # CPU: nothing to page-lock
    assert stages["parity"]["card_emulated"]["fp16"]["supported"] is True
    assert stages["gateway"]["settings"]["profile"] == "gpu"
    assert set(stages["sessions"]) == {"1", "2", "seconds"}
    point = stages["gateway"]["points"][0]
    assert point["ok"] > 0
    assert point["gateway_cpu_percent"] > 0
    assert (tmp_path / "nvidia-smi.txt").is_file()


def test_gpu_check_writes_json_after_each_stage_and_keeps_its_deadline(tmp_path: Path) -> None:
    # No time at all: every stage is recorded as skipped for the deadline, none runs.
    assert gpu_check.main(["--out", str(tmp_path), "--cpu-dry-run", "--deadline-s", "0"]) == 0
    stages = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert list(stages) == list(gpu_check.STAGES)
    assert all("deadline" in s["skipped"] for s in stages.values())
