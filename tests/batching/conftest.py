"""Fixtures: a real ONNX Runtime backend on a tiny model, behind a pausable wrapper."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from serving.backends.onnx_runtime import OnnxRuntimeBackend
from tests.batching.pausable import PausableBackend
from tests.batching.tiny_models import GATHER_ADD_CONFIG, gather_add, write_model


@pytest.fixture
def gather_add_path(tmp_path: Path) -> Path:
    return write_model(tmp_path, "gather_add", gather_add(), GATHER_ADD_CONFIG)


@pytest.fixture
async def ort_backend(gather_add_path: Path, request: pytest.FixtureRequest
                      ) -> AsyncIterator[PausableBackend]:
    instances = getattr(request, "param", 1)
    backend = PausableBackend(OnnxRuntimeBackend({"gather_add": gather_add_path},
                                                 instances=instances))
    await backend.start()
    yield backend
    backend.gate.set()
    await backend.aclose()
