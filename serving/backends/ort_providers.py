"""Which ONNX Runtime execution providers a session gets, with what options, or why not.

A GPU provider can be missing in three quiet ways: this build lacks it (the CPU wheel),
its library cannot load (CUDA 13 / cuDNN not on the loader path: ONNX Runtime logs an
error and silently drops it), or it fails to initialise (ONNX Runtime's Python layer
prints "EP Error" and retries on the next provider). All three end in a session that
runs on the CPU. This module makes each one loud:

* :func:`preload_gpu_libraries` loads the CUDA/cuDNN libraries that pip packages bring
  (``onnxruntime.preload_dlls``) before the first session, when a GPU provider is asked
  for and the build has one;
* :class:`ProviderPlan` builds the provider list with its options from settings (options
  are data: TensorRT FP16 and caches, CUDA device, TF32, graphs, arena), and after the
  sessions exist checks the providers they really got against ``require_providers``;
* :func:`why_not_loaded` finds ONNX Runtime's own reason for a provider it dropped.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

from serving.errors import Unavailable
from serving.settings import DEFAULT_USER_BUCKETS, Settings, default

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
_LIBRARIES = {CUDA: "onnxruntime_providers_cuda", TENSORRT: "onnxruntime_providers_tensorrt"}
_preloaded = False


def build_description() -> str:
    """This ONNX Runtime build in a few words, for messages."""
    return (f"onnxruntime {ort.__version__} ({ort.get_device()} build; available: "
            f"{', '.join(ort.get_available_providers())})")


def preload_gpu_libraries(requested: Sequence[str]) -> bool:
    """Load CUDA and cuDNN from the ``nvidia-*`` pip packages (or the loader path) before
    the first GPU session, once per process; whether it ran. ONNX Runtime's CUDA 13 build
    finds them nowhere else unless ``LD_LIBRARY_PATH`` names them. A failure is a warning:
    the session check that follows says whether the provider then loaded."""
    global _preloaded
    wanted = [p for p in requested if p in GPU_PROVIDERS and p in ort.get_available_providers()]
    preload = getattr(ort, "preload_dlls", None)
    if _preloaded or not wanted or preload is None:
        return False
    try:
        preload()
    except Exception as e:  # ORT's helper raises whatever ctypes does
        log.warning("onnxruntime.preload_dlls() failed (%s): %s", type(e).__name__, e)
    _preloaded = True
    log.info("preloaded the CUDA/cuDNN libraries for %s", ", ".join(wanted))
    return True


def _library(provider: str) -> Path | None:
    name = _LIBRARIES.get(provider)
    if name is None:
        return None
    capi = Path(ort.__file__).parent / "capi"
    return capi / (f"{name}.dll" if sys.platform == "win32" else f"lib{name}.so")


def why_not_loaded(provider: str, model_path: Path | None = None,
                   options: Mapping[str, str] | None = None) -> str:
    """ONNX Runtime's own reason for dropping ``provider``, as far as it can be had.

    Tried in order: not in this build; its provider library fails to load (the loader's
    message, the one ONNX Runtime logs, e.g. ``libcublasLt.so.13: cannot open shared
    object file``); creating a session on it alone without the Python fallback raises
    (ONNX Runtime's exception text); otherwise ONNX Runtime dropped it without an error.
    """
    if provider not in ort.get_available_providers():
        return f"not in this ONNX Runtime build: {build_description()}"
    library = _library(provider)
    if library is not None and library.exists():
        shared = library.with_name(library.name.replace(
            _LIBRARIES[provider], "onnxruntime_providers_shared"))
        try:
            if shared.exists():
                ctypes.CDLL(str(shared), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
            ctypes.CDLL(str(library))
        except OSError as e:
            return f"its library {library.name} does not load: {e}"
    if model_path is not None:
        reason = _initialise_alone(provider, model_path, options or {})
        if reason is not None:
            return reason
    return ("ONNX Runtime dropped it without raising an error (no usable GPU or driver?); "
            "run `nvidia-smi` and check the CUDA libraries on the loader path")


# ONNX Runtime's native logger writes ANSI-coloured text to fd 2, which would break the
# gateway's one-JSON-object-per-line stderr. Its errors also come back as Python exceptions
# (logged by the backend as JSON) and dropped providers are reported with their reason by
# ProviderPlan.check, so only FATAL (written just before the process dies) stays native.
NATIVE_LOG_SEVERITY = 4


def quiet_native_log(options: ort.SessionOptions) -> ort.SessionOptions:
    """Keep ONNX Runtime's native logger off stderr, process-wide and for sessions created
    with ``options`` (returned, for chaining), so every stderr line stays JSON."""
    ort.set_default_logger_severity(NATIVE_LOG_SEVERITY)
    options.log_severity_level = NATIVE_LOG_SEVERITY
    return options


def _initialise_alone(provider: str, path: Path, options: Mapping[str, str]) -> str | None:
    """A session on ``provider`` alone through ONNX Runtime's binding, which (unlike
    ``InferenceSession``) does not retry on the CPU when the provider raises: its error."""
    try:
        from onnxruntime.capi import _pybind_state as capi
        probe = capi.InferenceSession(quiet_native_log(ort.SessionOptions()), str(path),
                                      True, False)
        probe.initialize_session([provider], [dict(options)], set())
    except AttributeError:  # a binding without these entry points: no reason to give
        return None
    except Exception as e:  # ORT's own error types, whatever the provider raised
        return f"ONNX Runtime: {e}".strip()
    return None


@dataclass(frozen=True)
class ProviderPlan:
    """The providers to ask ONNX Runtime for, their options, and what must load."""

    requested: tuple[str, ...]
    require: str = "auto"
    options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderPlan:
        return cls(tuple(settings.providers), settings.require_providers,
                   provider_options(settings))

    @property
    def mode(self) -> str:
        """``require_providers`` resolved: ``auto`` is ``gpu`` when the first provider is
        not the CPU, except the built-in list on a build without any GPU provider (the CPU
        wheel on a laptop), where it is ``none``."""
        if self.require != "auto":
            return self.require
        first_gpu = bool(self.requested) and self.requested[0] != CPU
        lenient = (list(self.requested) == list(default("providers"))
                   and not any(p in ort.get_available_providers() for p in GPU_PROVIDERS))
        return "gpu" if first_gpu and not lenient else "none"

    def chain(self) -> tuple[list[str], list[dict[str, str]]]:
        """The requested providers this build has, in order, CPU last, and their options
        (the CUDA libraries are preloaded first when a GPU provider is among them). Those
        left out are reported by :meth:`check`."""
        available = set(ort.get_available_providers())
        preload_gpu_libraries(self.requested)
        chosen = [name for name in self.requested if name in available]
        if CPU not in chosen:
            chosen.append(CPU)
        return chosen, [dict(self.options.get(name, {})) for name in chosen]

    def check(self, model: str, enabled: Sequence[str], path: Path | None) -> None:
        """Compare the providers a session really got with the requested ones: each one
        missing is a WARNING with ONNX Runtime's reason, or, where :attr:`mode` requires
        it, a refusal.

        Raises:
            Unavailable: ``gpu``: none of the requested GPU providers runs the session;
                ``all``: one of the requested providers does not. The message names them
                and ONNX Runtime's reason.
        """
        missing = [p for p in self.requested if p not in enabled]
        reasons = {p: why_not_loaded(p, path, self.options.get(p)) for p in missing}
        gpu = [p for p in self.requested if p in GPU_PROVIDERS]
        refused: list[str] = []
        if self.mode == "all":
            refused = missing
        elif self.mode == "gpu" and gpu and not set(gpu) & set(enabled):
            refused = gpu
        if refused:
            detail = "; ".join(f"{p}: {reasons[p]}" for p in refused)
            raise Unavailable(f"model '{model}' cannot run on the required ONNX Runtime "
                              f"provider(s) (require_providers={self.require}, the session "
                              f"got {', '.join(enabled)}): {detail}")
        for p in missing:
            log.warning("ONNX Runtime provider %s skipped for model %s: %s", p, model,
                        reasons[p])


def tensorrt_profile(path: Path, rows: Sequence[int], user_rows: Sequence[int]
                     ) -> dict[str, str]:
    """TensorRT's shape profile options for the model at ``path`` from the batch buckets:
    min 1 row, opt the lower middle bucket, max the largest, so one engine serves every
    bucket shape instead of one engine build per new shape. Inputs whose leading dimension
    is named ``requests`` (the exporter's name for user rows) take ``user_rows``, other
    dynamic leading dimensions ``rows``; no buckets or no graph to read: no options."""
    if not rows:
        return {}
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError and others: ORT then reports the file
        log.warning("no TensorRT shape profile for %s: %s", path, e)
        return {}
    users = sorted(user_rows) or list(DEFAULT_USER_BUCKETS)
    candidates = sorted(rows)
    points = {"min": (1, 1), "opt": (candidates[(len(candidates) - 1) // 2],
                                     users[(len(users) - 1) // 2]),
              "max": (candidates[-1], users[-1])}
    initializers = {i.name for i in graph.initializer}
    out = {}
    for point, (n, r) in points.items():
        shapes = []
        for value in (v for v in graph.input if v.name not in initializers):
            dims = []
            for axis, d in enumerate(value.type.tensor_type.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(d.dim_value)
                else:
                    dims.append((r if d.dim_param == "requests" else n) if axis == 0 else 1)
            shapes.append(f"{value.name}:" + "x".join(str(d) for d in dims))
        out[f"trt_profile_{point}_shapes"] = ",".join(shapes)
    return out


def provider_options(settings: Settings) -> dict[str, dict[str, str]]:
    """Provider options from the settings, as ONNX Runtime takes them (strings), with
    ``provider_options`` applied last. TF32 is off unless asked for: the model card's
    parity bar is for FP32."""
    device = str(settings.cuda_device_id)
    cuda = {"device_id": device, "use_tf32": _flag(settings.cuda_tf32),
            "enable_cuda_graph": _flag(settings.cuda_graphs),
            "arena_extend_strategy": settings.cuda_arena_extend}
    tensorrt = {"device_id": device, "trt_fp16_enable": _flag(settings.tensorrt_fp16),
                "trt_cuda_graph_enable": _flag(settings.cuda_graphs)}
    if settings.tensorrt_cache_dir is not None:
        cache = os.fspath(settings.tensorrt_cache_dir)
        tensorrt.update(trt_engine_cache_enable="1", trt_engine_cache_path=cache,
                        trt_timing_cache_enable="1", trt_timing_cache_path=cache)
    options = {CUDA: cuda, TENSORRT: tensorrt}
    for name, extra in settings.provider_options.items():
        options[name] = {**options.get(name, {}), **extra}
    return options


def _flag(value: bool) -> str:
    return "1" if value else "0"
