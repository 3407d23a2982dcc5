"""Reliability fixtures: the gateway tests' real held-out requests, ONNX Runtime reference
and in-process gateway factory, re-exported so these tests run against the same things."""

from __future__ import annotations

from tests.gateway.conftest import heldout, reference, start_gateway

__all__ = ["heldout", "reference", "start_gateway"]
