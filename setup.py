"""Build hook only (metadata is in pyproject.toml): generate the gRPC stubs of
``serving/rpc/proto/*.proto`` before the package is copied, so wheels ship them.
See serving/rpc/protogen.py for why they are generated rather than committed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    """``build_py`` that runs protoc (grpcio-tools, a build requirement) first."""

    def run(self) -> None:
        spec = importlib.util.spec_from_file_location(
            "rankserve_protogen", ROOT / "serving" / "rpc" / "protogen.py")
        assert spec is not None
        assert spec.loader is not None
        protogen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(protogen)
        protogen.generate(ROOT)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
