"""``rankserve serve --workers 2``: two real processes on one port under a supervisor."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

from tests.serve_process import serve_process

REPOSITORY = "model_repository"
DEADLINE_S = 60.0


def pid_of(address: str) -> int:
    """The pid of the worker that answered (each call opens a new connection)."""
    with urllib.request.urlopen(f"{address}/healthz", timeout=10) as response:
        return int(json.loads(response.read())["pid"])


def poll_pids(address: str, want: int) -> list[int]:
    """Worker pids of every ``/healthz`` answer, polled until ``want`` distinct ones
    answered (or a deadline)."""
    answers: list[int] = []
    give_up = time.monotonic() + DEADLINE_S
    while len(set(answers)) < want and time.monotonic() < give_up:
        try:
            answers.append(pid_of(address))
        except OSError:
            time.sleep(0.1)  # a worker just died: its connection was refused or reset
    return answers


def healthz_count(address: str) -> int:
    """``/healthz`` requests counted by ``/metrics``' latency histogram, series summed."""
    with urllib.request.urlopen(f"{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("rankserve_request_latency_seconds_count{")
                     and 'route="/healthz"' in line))


def test_two_workers_share_the_port_sum_metrics_and_replace_a_killed_one() -> None:
    with serve_process("--model-repository", REPOSITORY, "--workers", "2",
                       "--providers", "CPUExecutionProvider") as (process, address):
        answers = poll_pids(address, 2)
        answers += [pid_of(address) for _ in range(30)]
        workers = set(answers)
        assert len(workers) == 2
        assert process.pid not in workers  # the supervisor does not serve
        # /metrics, from whichever worker answers, counts every worker's requests.
        assert healthz_count(address) == len(answers)

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        after = set(poll_pids(address, 2))
        assert len(after) == 2, after  # a new worker took the dead one's place
        assert victim not in after

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        for pid in after:  # every worker drained and exited with the supervisor
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"
