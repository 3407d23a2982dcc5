"""A client for the ``Ranking`` gRPC service, async (grpc.aio) and sync, over one channel.

A feed backend imports this::

    async with RankingClient("127.0.0.1:50051") as client:
        ranked = await client.rank({"user": {"user_id": 7}, "context": {...},
                                    "history": [...], "candidates": [{"video_id": 1}, ...]},
                                   top_k=50, timeout_s=0.05)
        ranked.ids, ranked.score

The document is the ``/v1/rank`` one (candidates row-wise or as columns); :func:`build`
turns it into a ``RankRequest`` message once, so load generators build once and send the
message with :meth:`RankingClient.rank_message`. ``timeout_s`` is the gRPC deadline, which
the server uses as the request's budget. Errors raise :class:`RankingError` with the gRPC
status and the server's stable code, field, request id and retry-after.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from grpc import aio

from serving.rpc.stubs import ranking_pb2 as pb
from serving.rpc.stubs import ranking_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the server's default max_body_bytes


@dataclass
class RankedCandidates:
    """A ``Rank`` answer; arrays are in ranked order (as ``/v1/rank``'s body)."""

    request_id: str
    model: str
    version: int
    degraded: bool
    id_field: str
    ids: np.ndarray
    score: np.ndarray
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    ignored_features: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class RankingError(Exception):
    """A failed ``Rank`` call: the gRPC status and what the server said about it."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.status: grpc.StatusCode = error.code()
        self.message: str = error.details() or ""
        trailing = dict(error.trailing_metadata() or ())
        self.code: str = str(trailing.get("rankserve-error-code", "unknown"))
        self.field: str | None = trailing.get("rankserve-error-field")
        self.request_id: str | None = trailing.get("x-request-id")
        retry = trailing.get("retry-after")
        self.retry_after_s: float | None = float(retry) if retry else None
        where = f" (field {self.field})" if self.field else ""
        super().__init__(f"{self.status.name} {self.code}: {self.message}{where}")


def _value(key: str, value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return pb.Value(bool_value=bool(value))
    if isinstance(value, (int, np.integer)):
        return pb.Value(int_value=int(value))
    if isinstance(value, (float, np.floating)):
        return pb.Value(float_value=float(value))
    if isinstance(value, str):
        return pb.Value(string_value=value)
    raise TypeError(f"feature {key!r}: {type(value).__name__} is not int, float, str or bool")


def _column(name: str, values: Sequence[Any] | np.ndarray) -> Any:
    """A candidate column; ``None`` entries (absent keys of row-wise candidates) are sent
    as ``missing`` positions."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iubf":
        array, missing = values, []
    else:
        missing = [i for i, v in enumerate(values) if v is None]
        present = [v for v in values if v is not None]
        filler = "" if present and isinstance(present[0], str) else 0
        array = np.asarray([filler if v is None else v for v in values])
    if array.dtype.kind in "iub":  # raw little-endian: the cheapest form for both sides
        return pb.Column(int64_le=array.astype("<i8").tobytes(), missing=missing)
    if array.dtype.kind == "f":
        return pb.Column(float64_le=array.astype("<f8").tobytes(), missing=missing)
    if array.dtype.kind == "U":  # dictionary encoded: each distinct string once
        index: dict[str, int] = {}
        codes = np.array([index.setdefault(v, len(index)) for v in array.tolist()], "<i4")
        codes[missing] = -1
        return pb.Column(dictionary=pb.DictionaryStrings(values=list(index),
                                                         codes_le=codes.tobytes()))
    raise TypeError(f"candidate column {name!r}: values must be all numbers or all strings")


def _columns(candidates: Any) -> dict[str, Any]:
    if isinstance(candidates, Mapping):
        return dict(candidates)
    names = list(dict.fromkeys(k for row in candidates for k in row))
    return {n: [row.get(n) for row in candidates] for n in names}


def build(document: Mapping[str, Any], *, top_k: int | None = None,
          budget_ms: float | None = None, weights: Mapping[str, float] | None = None,
          return_tasks: bool | list[str] | None = None) -> Any:
    """The ``RankRequest`` message for a ``/v1/rank`` document (options override it).

    Raises:
        TypeError: a feature value of a type the message cannot carry (a row-wise column
            with a candidate missing the feature is one: give every candidate each
            feature, or send columns).
    """
    top_k = top_k if top_k is not None else document.get("top_k")
    budget_ms = budget_ms if budget_ms is not None else document.get("budget_ms")
    weights = weights if weights is not None else document.get("weights")
    tasks = return_tasks if return_tasks is not None else document.get("return_tasks")
    message = pb.RankRequest(
        request_id=document.get("request_id") or "", model=document.get("model") or "",
        user={k: _value(k, v) for k, v in (document.get("user") or {}).items()
              if v is not None},
        context={k: _value(k, v) for k, v in (document.get("context") or {}).items()
                 if v is not None},
        history=[int(v) for v in document.get("history") or ()],
        candidates={k: _column(k, v) for k, v in
                    _columns(document.get("candidates") or {}).items()},
        top_k=top_k or 0, weights=dict(weights or {}),
        return_all_tasks=tasks is True,
        return_tasks=list(tasks) if isinstance(tasks, list) else [])
    if budget_ms is not None:
        message.budget_ms = budget_ms
    return message


def column_values(column: Any) -> np.ndarray:
    """A ``Column`` message's values as an array (gaps of a dictionary column as None)."""
    kind = column.WhichOneof("values")
    if kind == "int64_le":
        return np.frombuffer(column.int64_le, "<i8").astype(np.int64)
    if kind == "float64_le":
        return np.frombuffer(column.float64_le, "<f8").astype(np.float64)
    if kind == "dictionary":
        strings = list(column.dictionary.values)
        codes = np.frombuffer(column.dictionary.codes_le, "<i4")
        return np.array([strings[c] if c >= 0 else None for c in codes], dtype=object)
    return np.asarray(getattr(column, kind).values) if kind else np.array([], np.int64)


def parse(response: Any) -> RankedCandidates:
    """A ``RankResponse`` message as arrays."""
    ids = column_values(response.ids)
    return RankedCandidates(
        request_id=response.request_id, model=response.model,
        version=response.model_version, degraded=response.degraded,
        id_field=response.id_field, ids=ids, score=np.asarray(response.scores),
        probs={t: np.asarray(p.values, dtype=np.float32) for t, p in response.probs.items()},
        ignored_features=list(response.ignored_features), timings=dict(response.timings))


def _metadata(token: str | None, request_id: str | None,
              extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    entries = list(extra)
    if token:
        entries.append(("authorization", f"Bearer {token}"))
    if request_id:
        entries.append(("x-request-id", request_id))
    return tuple(entries)


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


class RankingClient:
    """Async client over one grpc.aio channel (HTTP/2 multiplexes concurrent calls)."""

    def __init__(self, target: str, *, token: str | None = None, timeout_s: float = 10.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._channel = aio.insecure_channel(target, options=_options(max_message_bytes))
        self._stub = pb_grpc.RankingStub(self._channel)
        self._token = token
        self.timeout_s = timeout_s

    async def __aenter__(self) -> RankingClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def rank(self, document: Mapping[str, Any], *, timeout_s: float | None = None,
                   request_id: str | None = None, **options: Any) -> RankedCandidates:
        """Rank one ``/v1/rank`` document (options: ``top_k``, ``budget_ms``, ``weights``,
        ``return_tasks``).

        Raises:
            RankingError: the server answered with an error status (or the deadline
                passed: DEADLINE_EXCEEDED).
            TypeError: see :func:`build`.
        """
        return parse(await self.rank_message(build(document, **options),
                                             timeout_s=timeout_s, request_id=request_id))

    async def rank_message(self, message: Any, *, timeout_s: float | None = None,
                           request_id: str | None = None,
                           metadata: Sequence[tuple[str, str]] = ()) -> Any:
        """Send a prebuilt ``RankRequest``; the raw ``RankResponse``. ``metadata``: extra
        entries, e.g. a W3C ``traceparent`` to continue the caller's trace.

        Raises:
            RankingError: as :meth:`rank`.
        """
        try:
            return await self._stub.Rank(message, timeout=timeout_s or self.timeout_s,
                                         metadata=_metadata(self._token, request_id, metadata))
        except aio.AioRpcError as e:
            raise RankingError(e) from None


class SyncRankingClient:
    """Blocking client over one grpc channel (thread-safe: share it between threads)."""

    def __init__(self, target: str, *, token: str | None = None, timeout_s: float = 10.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._channel = grpc.insecure_channel(target, options=_options(max_message_bytes))
        self._stub = pb_grpc.RankingStub(self._channel)
        self._token = token
        self.timeout_s = timeout_s

    def __enter__(self) -> SyncRankingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def rank(self, document: Mapping[str, Any], *, timeout_s: float | None = None,
             request_id: str | None = None, **options: Any) -> RankedCandidates:
        """As :meth:`RankingClient.rank`, blocking.

        Raises:
            RankingError, TypeError: as :meth:`RankingClient.rank`.
        """
        return parse(self.rank_message(build(document, **options), timeout_s=timeout_s,
                                       request_id=request_id))

    def rank_message(self, message: Any, *, timeout_s: float | None = None,
                     request_id: str | None = None,
                     metadata: Sequence[tuple[str, str]] = ()) -> Any:
        """Send a prebuilt ``RankRequest``; the raw ``RankResponse`` (``metadata`` as in
        :meth:`RankingClient.rank_message`).

        Raises:
            RankingError: as :meth:`RankingClient.rank`.
        """
        try:
            return self._stub.Rank(message, timeout=timeout_s or self.timeout_s,
                                   metadata=_metadata(self._token, request_id, metadata))
        except grpc.RpcError as e:
            raise RankingError(e) from None
