"""Start and stop a real gateway process for a load test, benchmark or experiment.

The gateway runs as its own process (``rankserve serve``), exactly as in production, so the
load generator never shares an interpreter or a GIL with it. Optional CPU pinning
(``taskset`` for the gateway, :func:`pinned` for this process) keeps server and load
generator on different cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType


class GatewayError(RuntimeError):
    """The gateway did not become ready; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run this process (and the children it starts meanwhile) on ``cpus`` for the block;
    nothing changes where ``cpus`` is empty or the platform cannot pin."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def wait_ready(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None
               ) -> None:
    """Poll ``<url>/readyz`` until it answers 200.

    Raises:
        GatewayError: the process exited, or ``timeout_s`` passed.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise GatewayError(f"gateway exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise GatewayError(f"gateway at {url} not ready after {timeout_s:.0f} s")


class GatewayProcess:
    """``rankserve serve`` on 127.0.0.1 as a context manager; ready on enter, stopped on exit.

    ``settings`` become ``RANKSERVE_<NAME>`` environment variables (e.g. ``{"batching":
    "false"}``); ``cpus`` pins the process with ``taskset -c``.
    """

    def __init__(self, log_path: Path, model_repository: Path = Path("model_repository"),
                 settings: Mapping[str, str] | None = None, cpus: str | None = None,
                 ready_timeout_s: float = 90.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.model_repository = model_repository
        self.settings = dict(settings or {})
        self.cpus = cpus
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        pin = ["taskset", "-c", self.cpus] if self.cpus else []
        return [*pin, sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--model-repository", str(self.model_repository)]

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def start(self) -> GatewayProcess:
        """Start the process and wait until it is ready.

        Raises:
            GatewayError: it exited or was not ready in time (with the end of its log).
        """
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "RANKSERVE_GRPC_PORT": "0",  # a free gRPC port unless the settings name one
               **{f"RANKSERVE_{k.upper()}": v for k, v in self.settings.items()}}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(self.url, self.ready_timeout_s, self.process)
        except GatewayError as e:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise GatewayError(f"{e}; log {self.log_path}:\n{tail}") from None
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM (the gateway drains and exits), SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
