"""SIGHUP reloads the repository of a real ``rankserve serve`` process: a version added on
disk starts answering, with no restart and no failed request meanwhile."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.rollout.conftest import add_version, make_repository
from tests.serve_process import serve_process

DEADLINE_S = 60.0


def rank(address: str, document: dict[str, Any]) -> tuple[int, int]:
    """(HTTP status, model version) of one /v1/rank call."""
    request = urllib.request.Request(f"{address}/v1/rank", data=json.dumps(document).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, int(json.loads(response.read())["model"]["version"])


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_repository(heldout: list[dict[str, Any]], versions_dir: Path,
                                       tmp_path: Path, workers: int) -> None:
    repository = make_repository(tmp_path, [1], versions_dir,
                                 policy="latest { num_versions: 1 }")
    with serve_process("--model-repository", str(repository),
                       "--providers", "CPUExecutionProvider", "--workers", str(workers),
                       env={"RANKSERVE_DEFAULT_BUDGET_MS": "10000"}) as (process, address):
        document = heldout[0]
        assert rank(address, document) == (200, 1)

        add_version(repository, 2, versions_dir / "2")
        process.send_signal(signal.SIGHUP)
        # Every worker reloads: each call is a new connection, which the kernel spreads over
        # the workers, so a worker left on version 1 would break every long run of 2s.
        answers = []
        settled = 12 * workers
        give_up = time.monotonic() + DEADLINE_S
        while time.monotonic() < give_up:
            answers.append(rank(address, document))
            if answers[-settled:] == [(200, 2)] * settled:
                break
        assert answers[-settled:] == [(200, 2)] * settled  # the new version answers
        assert {status for status, _ in answers} == {200}
        assert process.poll() is None

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
