"""The real ``onnxruntime-gpu`` wheel on a machine without a GPU or CUDA libraries.

Runs in an environment of its own (only one ONNX Runtime flavour may be installed in
one): ``RANKSERVE_ORT_GPU_PYTHON``, else ``.venv-gpu/bin/python`` (``ORT=gpu make``
builds it). Skipped where neither has the GPU build. A gateway asked for CUDA must not
start and must name what failed; with the CPU allowed it serves and reports the CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("RANKSERVE_ORT_GPU_PYTHON", ROOT / ".venv-gpu" / "bin" / "python"))


def _gpu_build() -> bool:
    if not PYTHON.is_file():
        return False
    probe = subprocess.run([str(PYTHON), "-c", "import onnxruntime as o; "
                            "print('CUDAExecutionProvider' in o.get_available_providers())"],
                           capture_output=True, text=True, timeout=60, check=False)
    return probe.stdout.strip() == "True"


pytestmark = pytest.mark.skipif(not _gpu_build(),
                                reason=f"no onnxruntime-gpu environment at {PYTHON}")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_a_gateway_asked_for_cuda_refuses_to_start_and_names_the_reason() -> None:
    done = run("-m", "serving.cli", "serve", "--port", "0",
               env={"RANKSERVE_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"})
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    refusal = next(line for line in out.splitlines() if "cannot start" in line)
    assert "CUDAExecutionProvider:" in refusal
    assert "preloaded the CUDA/cuDNN libraries" in out  # onnxruntime.preload_dlls() ran
    assert "session got CPUExecutionProvider" in refusal
    if "does not load" in refusal:  # no CUDA libraries here: the missing one is named
        assert re.search(r"lib\w+\.so[.\d]*: cannot open shared object file", refusal)


SERVE_ON_CPU = """
import asyncio, json
import numpy as np
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.backends.ort_providers import ProviderPlan
from serving.ranking.features import ITEM_NUMERIC, USER_NUMERIC

RANKER = "model_repository/feed_ranker/1/model.onnx"

async def main():
    backend = OnnxRuntimeBackend({"feed_ranker": RANKER}, instances=2, plan=ProviderPlan(
        ("CUDAExecutionProvider", "CPUExecutionProvider"), "none"))
    await backend.start()
    rows, rng = 50, np.random.default_rng(0)
    inputs = {"user_id": rng.integers(0, 100, 1), "user_cat": rng.integers(0, 3, (1, 27)),
              "user_num": rng.normal(size=(1, len(USER_NUMERIC))).astype(np.float32),
              "history": rng.integers(0, 100, (1, 20)), "item_id": rng.integers(0, 100, rows),
              "item_cat": rng.integers(0, 3, (rows, 6)),
              "item_num": rng.normal(size=(rows, len(ITEM_NUMERIC))).astype(np.float32),
              "item_to_user": np.zeros(rows, dtype=np.int64)}
    out = await backend.infer("feed_ranker", inputs, 30.0)
    print(json.dumps({"providers": backend.session_providers(),
                      "rows": int(out.outputs["probs"].shape[0])}))
    await backend.aclose()

asyncio.run(main())
"""


def test_with_the_cpu_allowed_it_serves_and_reports_the_cpu() -> None:
    done = run("-c", SERVE_ON_CPU)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"providers": {"feed_ranker": [["CPUExecutionProvider"]] * 2},
                      "rows": 50}
    assert "CUDAExecutionProvider skipped for model feed_ranker" in done.stderr
