"""Real ``tritonserver`` processes for the Triton tests, and the session's leak check.

Each server gets free ports and its own shared-memory prefix; all of them are stopped at the
end of the session, and the session fails if any Triton process or ``/dev/shm`` region
(Triton's or the gateway's) is left behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serving.localtriton.server import SHM_DIR, LocalTriton
from tests.triton.toy_repository import write_toy_repository

RUN_ID = uuid.uuid4().hex[:8]
SHM_PREFIX = f"rankserve-test-{RUN_ID}"
"""Every region of this session (Triton's and the backends') starts with this."""

_started: list[LocalTriton] = []


def start_triton(repository: Path, name: str) -> LocalTriton:
    """A started server that the session will stop and check for leaks."""
    server = LocalTriton(repository, shm_prefix=f"{SHM_PREFIX}-{name}-")
    _started.append(server)
    server.start()
    return server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    pids = [s.pid for s in _started if s.pid is not None]
    with ThreadPoolExecutor(max(len(_started), 1)) as pool:  # each stop waits ~4 s for Triton
        list(pool.map(LocalTriton.close, _started))
    alive = [pid for pid in pids if _alive(pid)]
    regions = sorted(p.name for p in SHM_DIR.glob(f"{SHM_PREFIX}*"))
    assert not alive, f"tritonserver processes left running: {alive}"
    assert not regions, f"shared memory regions left behind: {regions}"


@pytest.fixture(scope="session")
def toy_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_repository(tmp_path_factory.mktemp("toy_repository"))


@pytest.fixture(scope="session")
def triton(toy_repository: Path) -> LocalTriton:
    """A Triton shared by the tests that do not kill or pause it."""
    return start_triton(toy_repository, "shared")
