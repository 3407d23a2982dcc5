"""The generated ranking stubs, generated first when missing or stale (see
:mod:`serving.rpc.protogen` for why they are not committed).

``ranking_pb2`` holds the messages, ``ranking_pb2_grpc`` the service base class, stub and
registration function.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from serving.rpc import protogen


def _load() -> tuple[ModuleType, ModuleType]:
    """Import the stubs, generating them first in a source checkout when needed.

    Raises:
        ImportError: they are missing and grpcio-tools is not installed to build them.
    """
    sources = (protogen.PACKAGE_ROOT / protogen.PROTO_DIR / protogen.PROTOS[0]).exists()
    if sources and protogen.stale():
        protogen.generate()
    return (importlib.import_module("serving.rpc.proto.ranking_pb2"),
            importlib.import_module("serving.rpc.proto.ranking_pb2_grpc"))


ranking_pb2, ranking_pb2_grpc = _load()
