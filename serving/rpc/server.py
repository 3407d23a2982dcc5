"""The grpc.aio server beside the aiohttp one: both services over the one data plane.

:class:`RpcServer` is opened by ``rankserve serve`` (:mod:`serving.gateway.command`) after
the HTTP site, on ``grpc_port``, and stopped before the data plane closes: on SIGTERM it
stops taking calls, lets in-flight ones finish (up to the grace period), and only then do
the batchers drain. Messages are limited to ``max_body_bytes`` each way, like HTTP bodies
(grpc answers RESOURCE_EXHAUSTED past it before any decoding). Under ``--workers N`` each
worker binds the same port with ``SO_REUSEPORT``; a single gateway binds without it, so a
port clash is an error instead of two servers silently sharing the port.
"""

from __future__ import annotations

import logging

from grpc import aio
from tritonclient.grpc import service_pb2_grpc

from serving.errors import RankServeError
from serving.gateway.dataplane import DataPlane
from serving.rpc.kserve import KServeService
from serving.rpc.ranking import RankingService
from serving.rpc.stubs import ranking_pb2_grpc
from serving.settings import Settings
from serving.telemetry.metrics import Metrics

log = logging.getLogger("rankserve.serve")


class RpcServer:
    """Open with :meth:`start`, close with :meth:`stop`."""

    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self.plane = plane
        self.settings = settings
        self.metrics = metrics
        self.port: int | None = None
        self._server: aio.Server | None = None

    @property
    def address(self) -> str:
        """``host:port`` it listens on (after :meth:`start`)."""
        return f"{self.settings.host}:{self.port}"

    async def start(self, reuse_port: bool = False) -> int:
        """Bind ``host:grpc_port`` and start serving; the bound port (``grpc_port`` 0 picks
        a free one).

        Raises:
            RankServeError: the address cannot be bound (in use, not allowed).
        """
        limit = self.settings.max_body_bytes
        server = aio.server(options=[("grpc.max_receive_message_length", limit),
                                     ("grpc.max_send_message_length", limit),
                                     ("grpc.so_reuseport", int(reuse_port))])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeService(self.plane, self.settings, self.metrics), server)
        ranking_pb2_grpc.add_RankingServicer_to_server(
            RankingService(self.plane, self.settings, self.metrics), server)
        host = self.settings.host
        target = f"[{host}]:{self.settings.grpc_port}" if ":" in host \
            else f"{host}:{self.settings.grpc_port}"
        try:
            port = int(server.add_insecure_port(target))
        except RuntimeError as e:
            raise RankServeError(f"cannot listen for gRPC on {target}: {e} (setting "
                                 f"grpc_port: --grpc-port, RANKSERVE_GRPC_PORT)") from None
        if port == 0:  # older grpc reports a failed bind as port 0
            raise RankServeError(f"cannot listen for gRPC on {target} (setting grpc_port: "
                                 f"--grpc-port, RANKSERVE_GRPC_PORT)")
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to ``grace_s``, then cancel
        the rest (their queued work leaves the batcher)."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
