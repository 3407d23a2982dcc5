"""A real ``rankserve serve`` process whose model makes ONNX Runtime's native logger speak
(an initializer no node uses: ORT warns while it loads the session) still writes nothing
but JSON objects, one per line, on stderr."""

from __future__ import annotations

import json
import shutil
import signal
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from serving.repository.card import CARD_FILE, ONNX_FILE, sha256_of
from serving.train.data import load_requests
from tests.serve_process import PROJECT, serve_process


def noisy_repository(tmp_path: Path) -> Path:
    """The committed repository with an unused initializer added to the model (and the
    card's checksum updated), which ONNX Runtime reports natively at load."""
    repository = tmp_path / "repository"
    shutil.copytree(PROJECT / "model_repository", repository)
    version = repository / "feed_ranker" / "1"
    model = onnx.load(version / ONNX_FILE)
    model.graph.initializer.append(
        numpy_helper.from_array(np.zeros(3, np.float32), "rankserve_unused"))
    onnx.save(model, version / ONNX_FILE)
    card = json.loads((version / CARD_FILE).read_text())
    card["onnx_sha256"] = sha256_of(version / ONNX_FILE)
    (version / CARD_FILE).write_text(json.dumps(card))
    return repository


def test_stderr_is_only_json_when_onnx_runtime_logs(tmp_path: Path) -> None:
    document = load_requests(limit=1)[0]
    with serve_process("--model-repository", str(noisy_repository(tmp_path)),
                       "--providers", "CPUExecutionProvider", "--log-format", "json",
                       env={"RANKSERVE_DEFAULT_BUDGET_MS": "10000"},
                       read_log=False) as (process, address):
        request = urllib.request.Request(f"{address}/v1/rank",
                                         data=json.dumps(document).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        rest = process.stderr.read()
    lines = [line for line in rest.splitlines() if line]
    assert lines  # at least the shutdown lines were read
    for line in lines:
        assert "\x1b[" not in line, line
        assert isinstance(json.loads(line), dict), line
