"""gRPC fixtures: a real gateway (tests/gateway/conftest.py) with the real grpc.aio server
on a free loopback port beside it, sharing its data plane."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from serving.gateway.keys import DATA_PLANE, METRICS, SETTINGS
from serving.rpc.server import RpcServer
from tests.gateway.conftest import Gateway, GatewayFactory, heldout, reference, start_gateway

__all__ = ["heldout", "reference", "start_gateway"]


@dataclass
class RpcGateway:
    gateway: Gateway
    server: RpcServer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


RpcFactory = Callable[..., Awaitable[RpcGateway]]


@pytest.fixture
async def start_rpc(start_gateway: GatewayFactory) -> AsyncIterator[RpcFactory]:
    """Starts gateways (settings overrides as keyword arguments) serving gRPC too."""
    servers: list[RpcServer] = []

    async def start(**overrides: Any) -> RpcGateway:
        gateway = await start_gateway(**{"grpc_port": 0, "host": "127.0.0.1", **overrides})
        app = gateway.app
        server = RpcServer(app[DATA_PLANE], app[SETTINGS], app[METRICS])
        await server.start()
        servers.append(server)
        return RpcGateway(gateway, server)

    yield start
    for server in servers:
        await server.stop(0)
