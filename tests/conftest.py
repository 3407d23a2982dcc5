"""Suite-wide: every gateway a test starts binds a free gRPC port (``grpc_port`` 0), as
tests already pass ``--port 0`` for HTTP, so parallel runs on one machine never meet on the
default gRPC port. A test may still set ``RANKSERVE_GRPC_PORT`` or ``--grpc-port``."""

from __future__ import annotations

import os

os.environ.setdefault("RANKSERVE_GRPC_PORT", "0")

pytest_plugins = ["tests.trace_export"]  # the ``exported`` span fixture of the trace tests
