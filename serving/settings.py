"""One typed settings object for the gateway.

Values come, in increasing priority, from the defaults below, an optional YAML file
(``--config`` or ``RANKSERVE_CONFIG``), environment variables prefixed ``RANKSERVE_``
(e.g. ``RANKSERVE_PORT=9000``) and command-line flags. ``rankserve serve --help`` prints
every field with its default. The Helm chart's ConfigMap sets the same names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Gateway settings; every field is documented because ``--help`` prints these texts."""

    model_config = SettingsConfigDict(env_prefix="RANKSERVE_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
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
    shutdown_delay_s: float = Field(
        0.0, ge=0, description="Seconds between SIGTERM and closing the listener: /readyz "
                               "answers 503 meanwhile (load balancers stop sending) and "
                               "requests still arriving are served.")
    log_level: str = Field("INFO", description="Logging level.")

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        return value.split(",") if isinstance(value, str) else value

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
        return cls.model_validate(merged)


def default(name: str) -> Any:
    """The default of setting ``name``: the one definition that constructors taking the
    same knob (backends, batch policy) default to, so no second copy can disagree.

    Raises:
        KeyError: no such setting.
    """
    return Settings.model_fields[name].get_default(call_default_factory=True)
