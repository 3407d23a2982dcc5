"""``rankserve triton`` as a developer runs it: serves, then stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from serving.localtriton.server import SHM_DIR, free_port

pytestmark = pytest.mark.triton


def test_ctrl_c_stops_the_server_and_removes_its_shared_memory(toy_repository: Path) -> None:
    command = [sys.executable, "-m", "serving.cli", "triton",
               "--model-repository", str(toy_repository), "--grpc-port", str(free_port()),
               "--http-port", str(free_port()), "--metrics-port", str(free_port())]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert cli.stdout is not None
        started = json.loads(cli.stdout.readline())
        client = grpcclient.InferenceServerClient(started["grpc"])
        assert client.is_model_ready("feed_ranker")
        assert started["models"] == ["feed_ranker"]
        regions = list(SHM_DIR.glob(f"rankserve-triton-{cli.pid}-*"))
        assert regions  # the python backend's own regions, under this server's prefix
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(started["pid"], 0)
    assert not list(SHM_DIR.glob(f"rankserve-triton-{cli.pid}-*"))
