"""A real ``rankserve serve`` process on a free port, for tests that need real signals."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serve_process(*args: str, env: dict[str, str] | None = None
                  ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``rankserve serve --port 0 ARGS``; yield the process and its address, read
    from the JSON log line that announces it. The process is killed if still running."""
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--port", "0", *args],
        cwd=PROJECT, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        assert process.stderr is not None
        address = None
        for line in process.stderr:
            entry = json.loads(line)
            if entry["msg"].startswith("listening on"):
                address = entry["addresses"][0]
                break
        assert address is not None, "the gateway exited before it listened"
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
