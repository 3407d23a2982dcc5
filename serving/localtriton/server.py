"""``rankserve triton``: a real local ``tritonserver`` for development, tests and benchmarks.

The server is the binary shipped inside the ``nvidia-pytriton`` wheel. That wheel pins
``numpy<2``, so it lives in its own virtual environment (``.venv-triton``, made by
``make triton-env``), as Triton has its own image in production. The gateway's environment
only launches the binary; the Triton environment supplies the python-backend stub's Python
(onnxruntime + numpy for the mirror's ``model.py``).

What starting it takes (found the hard way, kept in one place):

* a private backend directory whose ``python/`` holds links to the wheel's
  ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub built for the
  Triton environment's Python version;
* that environment's ``bin`` first on ``PATH`` (the stub finds its interpreter there) and
  its libpython directory on ``LD_LIBRARY_PATH``;
* a unique ``shm-region-prefix-name`` per server, so parallel servers never share
  ``/dev/shm`` regions, and removal of those regions after the server is gone (a killed
  server cannot remove them itself).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from serving.errors import Unavailable
from serving.localtriton.mirror import build_mirror

log = logging.getLogger(__name__)

VENV_ENV_VAR = "RANKSERVE_TRITON_VENV"
DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".venv-triton"
SHM_DIR = Path("/dev/shm")
_PROBE = ("import sys, sysconfig; print(sysconfig.get_paths()['purelib']); "
          "print(sysconfig.get_config_var('LIBDIR')); print('%d.%d' % sys.version_info[:2])")


@dataclass(frozen=True)
class TritonEnvironment:
    """Where the Triton virtualenv keeps the server binary, its libraries and the stub."""

    venv: Path
    server_dir: Path
    libpython_dir: Path
    python_version: str

    @classmethod
    def find(cls, venv: Path | None = None) -> TritonEnvironment:
        """Locate the environment (argument, ``$RANKSERVE_TRITON_VENV``, ``.venv-triton``).

        Raises:
            Unavailable: the environment or the ``nvidia-pytriton`` wheel is not installed.
        """
        venv = Path(venv or os.environ.get(VENV_ENV_VAR) or DEFAULT_VENV).absolute()
        python = venv / "bin" / "python"
        if not python.exists():
            raise Unavailable(f"no Triton environment at {venv}: run `make triton-env`")
        purelib, libdir, version = subprocess.run(
            [str(python), "-c", _PROBE], check=True, capture_output=True, text=True, timeout=30
        ).stdout.split()
        server_dir = Path(purelib) / "pytriton" / "tritonserver"
        if not (server_dir / "bin" / "tritonserver").exists():
            raise Unavailable(f"nvidia-pytriton is not installed in {venv}: run `make triton-env`")
        return cls(venv, server_dir, Path(libdir), version)

    def stub(self) -> Path:
        return self.server_dir / "python_backend_stubs" / self.python_version / \
            "triton_python_backend_stub"

    def link_backends(self, backend_dir: Path) -> None:
        """Fill a private backend directory with links to the python backend's files."""
        python_dir = backend_dir / "python"
        python_dir.mkdir(parents=True)
        wheel_backend = self.server_dir / "backends" / "python"
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (python_dir / name).symlink_to(wheel_backend / name)
        (python_dir / "triton_python_backend_stub").symlink_to(self.stub())

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        libs = [str(self.libpython_dir), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
        env.pop("PYTHONPATH", None)  # the stub must not see the gateway's packages
        return env


def free_port() -> int:
    """A port that is free now on 127.0.0.1 (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalTriton:
    """One ``tritonserver`` process serving the python-backend mirror of a repository.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The server runs in its
    own process group (its python-backend stubs included), which :meth:`kill`, :meth:`pause`
    and :meth:`resume` signal as a whole, the way a crash or a frozen host would look.
    """

    def __init__(self, repository: Path, *, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, shm_prefix: str | None = None,
                 venv: Path | None = None, log_path: Path | None = None) -> None:
        self.repository = repository
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.shm_prefix = shm_prefix or f"rankserve-triton-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self.env = TritonEnvironment.find(venv)
        # Removed by close(), or at interpreter exit if a caller only stop()s the server.
        self._tmp = tempfile.TemporaryDirectory(prefix="rankserve-triton-")
        self._workdir = Path(self._tmp.name)
        self.log_path = log_path or self._workdir / "tritonserver.log"
        self.models = build_mirror(repository, self._workdir / "models")
        self.env.link_backends(self._workdir / "backends")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        return [
            str(self.env.server_dir / "bin" / "tritonserver"),
            f"--model-repository={self._workdir / 'models'}",
            f"--backend-directory={self._workdir / 'backends'}",
            "--model-control-mode=explicit", "--load-model=*",
            "--disable-auto-complete-config", "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0", "--exit-on-error=true",
            "--exit-timeout-secs=5", "--log-verbose=0",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}", "--allow-metrics=true",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=1048576",
        ]

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the server and wait until every model is ready.

        Raises:
            Unavailable: the server exited or was not ready within ``timeout_s``; the
                message carries the end of its log.
        """
        if self.running():
            return
        with self.log_path.open("ab") as out:
            self._process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env.process_env(), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                break
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise Unavailable(f"tritonserver did not become ready; log tail:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, sig)

    def pause(self) -> None:
        """Freeze the server and its stubs (SIGSTOP): connections stay open, calls hang."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server and its stubs at once (SIGKILL), as a crash would."""
        self._signal_group(signal.SIGCONT)
        self._signal_group(signal.SIGKILL)
        self._reap(timeout_s=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), killing after ``timeout_s``; remove its shm regions."""
        if self.running():
            self._signal_group(signal.SIGCONT)
            self._signal_group(signal.SIGTERM)
            try:
                self._reap(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
        self._reap(timeout_s=10)

    def _reap(self, timeout_s: float) -> None:
        if self._process is None:
            return
        self._process.wait(timeout=timeout_s)
        self._signal_group(signal.SIGKILL)  # stubs that outlived the server
        self.remove_shm()

    def shm_regions(self) -> list[Path]:
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def remove_shm(self) -> None:
        for region in self.shm_regions():
            with contextlib.suppress(FileNotFoundError):
                region.unlink()

    def close(self) -> None:
        """Stop the server and delete the mirror; safe to call twice."""
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> LocalTriton:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                        help="repository to mirror (default: model_repository)")
    parser.add_argument("--http-port", type=int, default=8010,
                        help="HTTP port (default 8010; 8000 is the gateway's)")
    parser.add_argument("--grpc-port", type=int, default=8001,
                        help="gRPC port, the gateway's --triton-url (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002,
                        help="Prometheus metrics port (default 8002)")
    parser.add_argument("--triton-venv", type=Path, default=None,
                        help=f"Triton environment (default ${VENV_ENV_VAR} or .venv-triton)")


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C / SIGTERM or until the server exits; always clean up."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = LocalTriton(args.model_repository, http_port=args.http_port,
                         grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                         venv=args.triton_venv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.start()
        print(json.dumps({"pid": server.pid, "grpc": server.grpc_url, "http": server.http_url,
                          "metrics": f"http://127.0.0.1:{server.metrics_port}/metrics",
                          "models": server.models, "log": str(server.log_path)}), flush=True)
        while server.running():
            time.sleep(0.5)
        log.error("tritonserver exited; log tail:\n%s", server.log_tail())
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()
