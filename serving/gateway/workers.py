"""``rankserve serve --workers N``: N gateway processes on one port, under one supervisor.

Why processes: the gateway's own Python (decoding, encoding, batching, responses) runs on
one core per event loop, so a box with 16 cores needs 16 loops to use them. Each worker is
a complete gateway (its own batchers and backend sessions, so memory grows by one copy of
the ONNX Runtime sessions per worker); the kernel spreads new connections across workers
that listen on the same port with ``SO_REUSEPORT``.

Why a small supervisor of our own rather than gunicorn: the gateway's lifecycle (the
ordered SIGTERM drain with ``shutdown_delay_s``, SIGHUP reloads that swap a generation,
readiness during warm-up) is the one :func:`serving.gateway.command.serve` already
implements and tests; gunicorn's aiohttp worker would replace it with its own and add a
dependency for what is here a loop of ``multiprocessing`` calls. The supervisor:

* starts the workers (``spawn``: no state inherited from a parent that imported numpy);
* forwards SIGTERM/SIGINT to every worker and waits for each to drain and exit;
* forwards SIGHUP (reload the repository) to every worker;
* replaces a worker that dies unexpectedly, with a growing pause if it keeps dying;
* with ``--port 0``, picks one free port first so every worker binds the same one;
* gives the workers one folder for their metrics, so ``/metrics`` sums them
  (:mod:`serving.telemetry.metrics`), and removes it at the end.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from serving.settings import Settings
from serving.telemetry.metrics import MULTIPROCESS_DIR

log = logging.getLogger(__name__)

RESTART_PAUSE_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Pauses before restarting a worker that died again soon after its last start."""
STABLE_AFTER_S = 30.0
"""A worker that lived this long resets its restart pause."""
POLL_S = 0.2


def worker_count(setting: int | str) -> int:
    """How many workers ``workers`` asks for (``auto``: one per core this process may use)."""
    if setting == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
    return int(setting)


def _reserve_port(host: str) -> int:
    """A free port for every worker to bind (``--port 0`` with several workers)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


_reload_pending = False


def _remember_reload(signum: int, frame: FrameType | None) -> None:
    global _reload_pending
    _reload_pending = True


def reload_requested_while_starting() -> bool:
    """Whether a SIGHUP reached this worker before it could reload (then it must, once)."""
    global _reload_pending
    pending, _reload_pending = _reload_pending, False
    return pending


def _worker_main(settings: Settings, index: int) -> None:
    """A worker process: one gateway, binding the shared port with SO_REUSEPORT."""
    from serving.gateway.command import run_event_loop, serve
    from serving.telemetry.logs import configure_logging

    # Until serve() installs its handlers, a reload forwarded while this worker still loads
    # must neither kill it nor be lost: it is remembered and run once serving starts.
    signal.signal(signal.SIGHUP, _remember_reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by _start
    configure_logging(settings.log_level, settings.log_format)
    os.environ["RANKSERVE_WORKER_INDEX"] = str(index)
    run_event_loop(serve(settings, reuse_port=True))


class Supervisor:
    """Runs ``count`` workers until SIGTERM/SIGINT (see the module docstring)."""

    def __init__(self, settings: Settings, count: int) -> None:
        port = settings.port or _reserve_port(settings.host)
        grpc_port = settings.grpc_port or (_reserve_port(settings.host)
                                           if settings.grpc_enabled else 0)
        self.settings = settings.model_copy(update={"port": port, "grpc_port": grpc_port,
                                                    "workers": 1})
        self.count = count
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, multiprocessing.context.SpawnProcess] = {}
        self._started_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._stopping = False

    def run(self) -> int:
        """Serve until told to stop; 0 when every worker drained cleanly."""
        metrics_dir = Path(tempfile.mkdtemp(prefix="rankserve-metrics-"))
        os.environ[MULTIPROCESS_DIR] = str(metrics_dir)  # inherited by every worker
        try:
            return self._supervise()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _supervise(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        log.info("starting %d gateway workers on port %d", self.count, self.settings.port,
                 extra={"workers": self.count, "port": self.settings.port})
        for index in range(self.count):
            self._start(index)
        while not self._stopping:
            time.sleep(POLL_S)
            self._replace_dead()
        return self._drain()

    def _start(self, index: int) -> None:
        process = self._context.Process(target=_worker_main, args=(self.settings, index),
                                        name=f"rankserve-worker-{index}", daemon=False)
        # A spawned worker spends seconds importing before _worker_main can install its
        # SIGHUP handler, and SIGHUP's default action kills it: it starts with SIGHUP
        # blocked (the mask survives exec), so a reload sent meanwhile waits, then counts.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        self._workers[index] = process
        self._started_at[index] = time.monotonic()

    def _replace_dead(self) -> None:
        for index, process in list(self._workers.items()):
            if process.is_alive() or self._stopping:
                continue
            if process.pid is not None:  # its live gauges leave the sums
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
            lived = time.monotonic() - self._started_at[index]
            failures = 0 if lived > STABLE_AFTER_S else self._failures.get(index, 0) + 1
            self._failures[index] = failures
            pause = RESTART_PAUSE_S[min(failures, len(RESTART_PAUSE_S)) - 1] if failures else 0
            log.error("worker %d (pid %s) exited with %s after %.1f s; restarting in %.1f s",
                      index, process.pid, process.exitcode, lived, pause)
            time.sleep(pause)
            if not self._stopping:
                self._start(index)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        log.info("reload: forwarding SIGHUP to %d workers", len(self._workers))
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, signum: int) -> None:
        for process in self._workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def _drain(self) -> int:
        """Forward SIGTERM and wait for every worker's ordered drain (``serve``'s own)."""
        log.info("stopping: forwarding SIGTERM to %d workers", len(self._workers))
        self._signal_all(signal.SIGTERM)
        status = 0
        for index, process in self._workers.items():
            process.join()
            if process.exitcode not in (0, -signal.SIGTERM, None):  # killed while starting
                log.warning("worker %d exited with %s", index, process.exitcode)
                status = 1
        return status
