"""``rankserve serve`` runs gRPC beside HTTP: on by default, one data plane, under
``--workers N`` on one port, drained on SIGTERM; a gRPC port clash is one line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from serving.rpc.client import SyncRankingClient
from serving.train.data import load_requests
from tests.serve_process import PROJECT, serve_process

REPOSITORY = str(PROJECT / "model_repository")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ranked(port: int, document: dict[str, Any]) -> int:
    with SyncRankingClient(f"127.0.0.1:{port}", timeout_s=30) as client:
        return len(client.rank(document, top_k=2).ids)


def test_two_workers_serve_grpc_on_one_port_and_drain_on_sigterm() -> None:
    port = free_port()
    document = load_requests(limit=1)[0]
    with serve_process("--model-repository", REPOSITORY, "--workers", "2",
                       "--grpc-port", str(port), "--shutdown-delay-s", "1",
                       "--providers", "CPUExecutionProvider") as (process, _):
        # the supervisor answers only once a worker is up; every call lands on a worker
        answers = [ranked(port, document) for _ in range(20)]
        assert answers == [min(2, len(document["candidates"]))] * 20
        process.send_signal(signal.SIGTERM)
        assert ranked(port, document) > 0  # still served during shutdown_delay_s
        assert process.wait(timeout=60) == 0


def test_a_grpc_port_in_use_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "serving.cli", "serve", "--port", "0", "--grpc-port",
             str(port), "--model-repository", str(tmp_path / "nothing")],
            cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"rankserve serve: cannot listen on 127.0.0.1:{port}: already in use (setting "
        "grpc_port: --grpc-port, RANKSERVE_GRPC_PORT; host: --host)"]
