"""Build the configured backend from :class:`~serving.settings.Settings`.

The Triton backend is imported only when configured, so the embedded path needs neither
its module nor a Triton server. With ``failover: embedded`` the Triton backend gets an
embedded ONNX Runtime backend over the same models to fall back to.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

from serving.backends.base import Backend
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.settings import Settings


def build_backend(settings: Settings, models: Mapping[str, Path]) -> Backend:
    """The backend ``settings.backend`` names, serving ``models`` (name -> ONNX file)."""
    if settings.backend == "triton":
        # Imported lazily by name: only Triton deployments need the module (or tritonclient).
        triton = importlib.import_module("serving.backends.triton")

        fallback = (OnnxRuntimeBackend.from_settings(settings, models)
                    if settings.failover == "embedded" else None)
        backend: Backend = triton.TritonBackend.from_settings(settings, fallback=fallback)
        return backend
    return OnnxRuntimeBackend.from_settings(settings, models)
