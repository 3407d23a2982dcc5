"""A real ``rankserve serve`` process on a free port, for tests that need real signals."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serve_process(*args: str, env: dict[str, str] | None = None, read_log: bool = True
                  ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``rankserve serve --port 0 ARGS``; yield the process and its address, read
    from the JSON log line that announces it. The process is killed if still running.
    ``read_log=False`` leaves the rest of its stderr to the test."""
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
        # Keep reading its log: a full pipe would stall the gateway's writes, and a failing
        # test shows the log's tail (a worker's traceback, say).
        tail: list[str] = []
        reader = threading.Thread(target=lambda: tail.extend(process.stderr or ()), daemon=True)
        if read_log:
            reader.start()
        try:
            yield process, address
        except BaseException:
            if read_log and process.poll() is not None:
                reader.join(timeout=5)
            sys.stderr.write("gateway log (tail):\n" + "".join(tail[-60:]))
            raise
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
