"""One typed settings object for the gateway.

Values come, in increasing priority, from the defaults below, an optional YAML file
(``--config`` or ``RANKSERVE_CONFIG``), environment variables prefixed ``RANKSERVE_``
(e.g. ``RANKSERVE_PORT=9000``) and command-line flags. ``rankserve serve --help`` prints
every field with its default. The Helm chart's ConfigMap sets the same names.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Gateway settings; every field is documented because ``--help`` prints these texts."""

    model_config = SettingsConfigDict(env_prefix="RANKSERVE_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    grpc_enabled: bool = Field(
        True, description="Serve gRPC beside HTTP (KServe v2 GRPCInferenceService and the "
                          "rankserve Ranking service) on grpc_port, same data plane.")
    grpc_port: int = Field(50051, ge=0, le=65535,
                           description="gRPC port (0 picks a free one); messages obey "
                                       "max_body_bytes like HTTP bodies.")
    model_repository: Path = Field(Path("model_repository"),
                                   description="Triton-layout model repository to serve.")
    default_model: str = Field("feed_ranker", description="Model that /v1/rank scores with.")

    backend: Literal["embedded", "triton"] = Field(
        "embedded", description="Scoring backend: in-process ONNX Runtime or Triton over gRPC.")
    # NoDecode: the environment gives a comma-separated list, split by the validator below.
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"],
        description="ONNX Runtime providers in order of preference; unavailable ones are "
                    "skipped with the reason logged.")
    intra_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads per session.")
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime inter-op threads.")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimization level.")
    instances: int = Field(1, ge=1, description="Concurrent backend sessions (batches in flight).")

    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC address (host:port).")
    triton_shared_memory: bool = Field(
        False, description="Use system shared memory with Triton (same host only).")
    failover: Literal["embedded", "none"] = Field(
        "embedded", description="When Triton fails: score in-process (degraded) or answer 503.")
    triton_breaker_failures: int = Field(
        5, ge=1, description="Consecutive Triton failures that open its circuit breaker.")
    triton_breaker_reset_s: float = Field(
        1.0, gt=0, description="Seconds an open breaker waits before probing Triton again.")
    triton_poll_interval_s: float = Field(
        0.5, gt=0, description="Seconds between Triton readiness checks.")

    default_budget_ms: float = Field(50.0, gt=0, description="Budget when a request sets none.")
    max_budget_ms: float = Field(10_000.0, gt=0, description="Largest accepted budget.")
    batch_rows: int = Field(2048, ge=1, description="Row target at which a batch is dispatched.")
    chunk_rows: int = Field(1024, ge=1, description="Requests larger than this are split.")
    max_wait_ms: float = Field(
        2.0, ge=0, description="Longest a batch waits for more rows; capped at the backend's "
                               "learned fixed cost per batch.")
    max_queue_rows: int = Field(50_000, ge=1,
                                description="Queued rows past which requests get 429.")
    batching: bool = Field(True, description="Merge rows of concurrent requests into batches.")

    max_candidates: int = Field(10_000, ge=1, description="Most candidates per request.")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024,
                                description="Largest request body, checked before parsing.")
    auth_token: str | None = Field(None, description="Bearer token required on /v1 and /v2.")

    admin_enabled: bool = Field(
        False, description="Serve the /admin model-management endpoints (needs admin_token).")
    admin_token: str | None = Field(
        None, description="Bearer token the /admin endpoints require (own secret, not "
                          "auth_token).")
    rollout: dict[str, dict[int, float]] = Field(
        default_factory=dict,
        description="Traffic split per model by a stable hash of the user id, as JSON: "
                    '{"feed_ranker": {"1": 90, "2": 10}} (percentages summing to 100).')
    shadow: dict[str, int] = Field(
        default_factory=dict,
        description='Candidate version scored in the shadow of each request, as JSON: '
                    '{"feed_ranker": 2}; compared with the served scores, never returned.')
    shadow_max_inflight: int = Field(
        2, ge=1, description="Shadow scorings running at once; more are dropped (counted).")
    strict_features: bool = Field(
        False, description="Refuse (400) a /v1/rank request naming a feature the model's "
                           "schema lacks; otherwise it is ignored and listed in the "
                           "response's ignored_features.")
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="Gateway processes sharing the port (SO_REUSEPORT) under one "
                       "supervisor, each with its own batchers and backend sessions; 'auto' "
                       "is one per core.")
    shutdown_delay_s: float = Field(
        0.0, ge=0, description="Seconds between SIGTERM and closing the listener: /readyz "
                               "answers 503 meanwhile (load balancers stop sending) and "
                               "requests still arriving are served.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Logging level (any case).")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines as JSON objects or human-readable text; auto = text on "
                            "a terminal, JSON otherwise (log collectors).")

    # -- the GPU path of the embedded backend (serving/backends/ort_providers.py) --------
    require_providers: Literal["auto", "gpu", "all", "none"] = Field(
        "auto", description="Which configured providers must really run the sessions, else "
                            "the backend refuses to start (not ready, naming the provider and "
                            "ONNX Runtime's reason): gpu = at least one GPU provider; all = "
                            "every one listed; none = whatever loads. auto = gpu when the "
                            "first provider is not CPU, except the built-in provider list on "
                            "an ONNX Runtime build with no GPU provider (the CPU wheel).")
    cuda_device_id: int = Field(0, ge=0, description="GPU the CUDA and TensorRT providers use.")
    cuda_tf32: bool = Field(
        False, description="Allow TF32 matmuls on CUDA (faster; about 1e-4 off FP32, past "
                           "the model card's FP32 parity bar).")
    cuda_graphs: bool = Field(
        False, description="Capture CUDA graphs (needs fixed shapes: the batch buckets).")
    cuda_arena_extend: Literal["kNextPowerOfTwo", "kSameAsRequested"] = Field(
        "kNextPowerOfTwo", description="How the CUDA memory arena grows.")
    tensorrt_fp16: bool = Field(
        False, description="Let TensorRT build FP16 engines (about 6e-4 off FP32).")
    tensorrt_cache_dir: Path | None = Field(
        None, description="Folder for TensorRT engine and timing caches (a volume), so a "
                          "restart does not rebuild engines; unset: no caches.")
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto", description="Bound I/O with buffers reused per batch shape: auto = on GPU "
                            "providers only.")
    provider_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Extra ONNX Runtime provider options as JSON, by provider, applied over "
                    'the ones above: {"CUDAExecutionProvider": {"gpu_mem_limit": "8e9"}}.')
    buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Shape buckets: candidate-row counts every batch is padded up to (e.g. "
                    "1024,2048,4096,8192), so a GPU sees a few fixed shapes (TensorRT "
                    "profiles, CUDA graphs, bound buffers); the largest must hold "
                    "batch_rows. Empty: no padding (the CPU default).")
    user_buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="User-row counts the per-request inputs of a bucketed batch are padded "
                    "up to; empty: 1,4,16,64.")
    profile: Literal["cpu", "gpu"] = Field(
        "cpu", description="Defaults for the hardware: gpu sets batch_rows 8192, chunk_rows "
                           "4096, instances 2, buckets 1024..8192, io_binding on, "
                           "cuda_graphs on (see docs/deploy.md); any setting given "
                           "explicitly still wins.")

    # -- per-request and per-connection limits (gateway/v2_handlers.py, gateway/command.py)
    max_user_rows: int = Field(
        1024, ge=1, description="Most user (per-request) rows in one request: /v1/rank has "
                                "one; past this a /v2 request gets 413.")
    max_connections: int = Field(
        1000, ge=1, description="Open client connections past which new ones are closed at "
                                "once (kept below the file-descriptor limit).")
    keepalive_timeout_s: float = Field(
        15.0, gt=0, description="Seconds a connection may stay idle, or take to send a "
                                "request's headers (slowloris), before it is closed.")
    body_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a request may take to send its whole body (a slow "
                                "or never-ending chunked body gets 400).")

    @field_validator("provider_options", mode="before")
    @classmethod
    def _parse_provider_options(cls, value: Any) -> Any:
        """Flags and environment variables carry the options as JSON text; values become
        strings, as ONNX Runtime takes them."""
        value = json.loads(value) if isinstance(value, str) else value
        if isinstance(value, dict):
            return {p: ({k: str(v).lower() if isinstance(v, bool) else str(v)
                         for k, v in o.items()} if isinstance(o, dict) else o)
                    for p, o in value.items()}
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _text_forms(cls, value: Any, info: ValidationInfo) -> Any:
        """Text from flags and the environment: a list setting accepts a JSON list
        (``'["CPUExecutionProvider"]'``) or commas (``CPUExecutionProvider,...``); a
        ``*_bytes`` setting accepts units (``32MiB``, ``64k``)."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if typing.get_origin(annotation) is list:
            return parse_list(value, info.field_name)
        if info.field_name.endswith("_bytes"):
            return parse_size(value, info.field_name)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("rollout", "shadow", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        """Flags and environment variables carry these mappings as JSON text."""
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("rollout")
    @classmethod
    def _check_split(cls, value: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
        for model, split in value.items():
            if any(share < 0 for share in split.values()) \
                    or abs(sum(split.values()) - 100.0) > 1e-6:
                raise ValueError(f"rollout.{model}: percentages must be >= 0 and sum to 100")
        return value

    @model_validator(mode="after")
    def _admin_needs_token(self) -> Settings:
        if self.admin_enabled and not self.admin_token:
            raise ValueError("admin_enabled needs admin_token")
        return self

    @model_validator(mode="after")
    def _buckets_hold_batches(self) -> Settings:
        """Buckets must be positive and hold a whole batch; CUDA graphs need fixed shapes."""
        if any(b < 1 for b in (*self.buckets, *self.user_buckets)):
            raise ValueError(f"buckets and user_buckets must be positive row counts, got "
                             f"{self.buckets} and {self.user_buckets}")
        if self.buckets and max(self.buckets) < self.batch_rows:
            raise ValueError(f"buckets: the largest bucket ({max(self.buckets)}) must hold "
                             f"batch_rows ({self.batch_rows})")
        if self.cuda_graphs and not self.buckets:
            raise ValueError("cuda_graphs needs buckets (a CUDA graph replays one fixed "
                             "shape)")
        if self.cuda_graphs and self.io_binding == "off":
            raise ValueError("cuda_graphs needs io_binding (a graph replays fixed buffers)")
        return self

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Defaults < YAML file < environment < explicit overrides (flags).

        Raises:
            pydantic.ValidationError: a value has the wrong type or range; the message
                names the field and the value received.
        """
        file_values: dict[str, Any] = {}
        if config_file is not None:
            file_values = yaml.safe_load(config_file.read_text()) or {}
        env_values = cls().model_dump(exclude_unset=True)
        merged = {**file_values, **env_values,
                  **{k: v for k, v in overrides.items() if v is not None}}
        profile = PROFILES.get(str(merged.get("profile", "cpu")), {})
        return cls.model_validate({**profile, **merged})  # what is given beats the profile


DEFAULT_USER_BUCKETS = (1, 4, 16, 64)
"""``user_buckets`` when none are set: /v1/rank requests bring one user row each."""

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {"batch_rows": 8192, "chunk_rows": 4096, "instances": 2,
            "buckets": [1024, 2048, 4096, 8192], "user_buckets": [1, 4, 16, 64],
            "io_binding": "on", "cuda_graphs": True, "max_wait_ms": 2.0},
}
"""``profile``'s defaults (applied by :meth:`Settings.load`, under everything given): on a
GPU a 5,000-row batch costs about what a 1,000-row one does, so batches are large, two
sessions overlap copies with compute, and batches run at fixed bucket shapes."""


SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
              "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
ENV_PREFIX = "RANKSERVE_"
OTHER_VARIABLES = frozenset({
    "RANKSERVE_CONFIG", "RANKSERVE_AUTH_TOKEN_FILE", "RANKSERVE_ADMIN_TOKEN_FILE",
    "RANKSERVE_DATA", "RANKSERVE_URL", "RANKSERVE_HELM", "RANKSERVE_TRITON_VENV",
    "RANKSERVE_WORKER_INDEX", "RANKSERVE_CANDIDATES", "RANKSERVE_TOP_K"})
"""``RANKSERVE_*`` variables that are not settings but are read elsewhere (the config file,
secret files, training data, tests, the chart's test pod, the worker supervisor)."""
SECRET = re.compile(r"token|secret|password|credential", re.IGNORECASE)


def parse_list(text: str, name: str) -> list[str]:
    """``'["a", "b"]'`` or ``a,b`` as a list of strings (blanks dropped).

    Raises:
        ValueError: JSON text that is not a list of strings.
    """
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not a JSON list ({e.msg}): {text!r}") from e
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name}: expected a JSON list of strings, got {text!r}")
        return [v.strip() for v in value if v.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_size(text: str, name: str) -> int:
    """``32MiB``, ``64k``, ``1.5GB`` or a plain number of bytes.

    Raises:
        ValueError: not a number with a known unit.
    """
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in SIZE_UNITS:
        raise ValueError(f"{name}: expected bytes as a number with an optional unit "
                         f"(k, KiB, MB, MiB, GB, GiB), got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``RANKSERVE_*`` variable that names no setting (a typo is otherwise
    silently ignored), with the nearest setting's variable when one is close."""
    environ = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    lines = []
    for var in sorted(v for v in environ if v.upper().startswith(ENV_PREFIX)):
        if var.upper() in known:
            continue
        near = difflib.get_close_matches(var.upper(), sorted(known), n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        lines.append(f"unknown environment variable {var} ignored: no such setting{hint}")
    return lines


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (JSON types), secrets (tokens, passwords) masked: what
    ``--print-config`` prints and the start-up log records."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for name, value in data.items():
        if SECRET.search(name) and value:
            data[name] = "***"
    return data


def default(name: str) -> Any:
    """The default of setting ``name``: the one definition that constructors taking the
    same knob (backends, batch policy) default to, so no second copy can disagree.

    Raises:
        KeyError: no such setting.
    """
    return Settings.model_fields[name].get_default(call_default_factory=True)
