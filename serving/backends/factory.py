"""Build the configured backend from :class:`~serving.settings.Settings`.

The one place that decides failover: with ``backend: triton`` and ``failover: embedded``
the Triton backend gets an embedded ONNX Runtime backend over the same models to fall back
to (:mod:`serving.backends.failover`); with ``failover: none`` it answers 503 instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from serving.backends.base import Backend
from serving.backends.failover import FailoverBackend
from serving.backends.onnx_runtime import OnnxRuntimeBackend
from serving.backends.triton import TritonBackend
from serving.repository.served import ServedModel
from serving.settings import Settings


def build_backend(settings: Settings, models: Mapping[str, ServedModel]) -> Backend:
    """The backend ``settings.backend`` names, serving ``models`` (backend key -> model).

    Raises:
        ModelCardError: the backend cannot serve this set of models (Triton and several
            versions of one model).
    """
    if settings.backend == "triton":
        fallback = (OnnxRuntimeBackend.from_settings(settings, models)
                    if settings.failover == "embedded" else None)
        return FailoverBackend(TritonBackend.from_settings(settings, models), fallback)
    return OnnxRuntimeBackend.from_settings(settings, models)
