"""Generate the Python stubs of rankserve's own protos with grpcio-tools.

Why generated, not committed: generated code goes stale against its ``.proto`` without
anyone noticing, and it must match the protobuf runtime in use (the runtime refuses gencode
newer than itself). So the stubs are built from ``serving/rpc/proto/*.proto``:

* by the package build: ``setup.py``'s ``build_py`` calls :func:`generate` before copying
  the package, so wheels (and ``pip install .``) ship them;
* in a source checkout or an editable install, on first import (:mod:`serving.rpc.stubs`),
  when they are missing or older than their ``.proto``; under a file lock, written to a
  temporary folder and moved into place, so concurrent processes (``--workers N``, test
  runners) never import a half-written module.

This module needs only the standard library and ``grpc_tools``, so ``setup.py`` can load
it by path, before the package's own dependencies are installed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding ``serving/``: the protos' import root, so a generated module's
imports (``from serving.rpc.proto import ranking_pb2``) are the package's own."""
PROTO_DIR = Path("serving") / "rpc" / "proto"
PROTOS = ("ranking.proto",)
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def outputs(root: Path = PACKAGE_ROOT) -> list[Path]:
    """Every generated file under ``root``."""
    return [root / PROTO_DIR / (Path(p).stem + s) for p in PROTOS for s in SUFFIXES]


def stale(root: Path = PACKAGE_ROOT) -> bool:
    """Whether a generated file is missing or older than its ``.proto``."""
    for proto in PROTOS:
        source = (root / PROTO_DIR / proto).stat().st_mtime
        for suffix in SUFFIXES:
            out = root / PROTO_DIR / (Path(proto).stem + suffix)
            if not out.exists() or out.stat().st_mtime < source:
                return True
    return False


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive lock beside the protos (one generator at a time)."""
    import fcntl

    with open(root / PROTO_DIR / ".generate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def generate(root: Path = PACKAGE_ROOT, force: bool = False) -> None:
    """Run protoc (grpcio-tools) on every proto into its own folder, atomically.

    Raises:
        ImportError: grpcio-tools is not installed.
        RuntimeError: protoc failed (its message says why).
        OSError: the package folder is not writable.
    """
    from grpc_tools import protoc

    with _locked(root):
        if not force and not stale(root):
            return  # another process generated them while this one waited
        include = Path(protoc.__file__).parent / "_proto"  # well-known types
        with tempfile.TemporaryDirectory(dir=root / PROTO_DIR) as scratch:
            args = ["grpc_tools.protoc", f"-I{root}", f"-I{include}",
                    f"--python_out={scratch}", f"--grpc_python_out={scratch}",
                    f"--pyi_out={scratch}",
                    *(str(root / PROTO_DIR / p) for p in PROTOS)]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {', '.join(PROTOS)} (see its output)")
            for out in outputs(root):  # a rename: importers see all of a file or none
                os.replace(Path(scratch) / out.relative_to(root), out)


if __name__ == "__main__":  # python serving/rpc/protogen.py: regenerate by hand
    generate(force=True)
    sys.exit(0)
