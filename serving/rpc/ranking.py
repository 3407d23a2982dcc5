"""The rankserve ``Ranking`` service (``serving/rpc/proto/ranking.proto``): ``/v1/rank``
over gRPC, translation only.

A ``RankRequest`` message becomes the same document ``/v1/rank`` decodes (columns as numpy
arrays, as the binary encoding gives them) and goes through the same validation
(:func:`serving.gateway.rank_codec.to_rank_request`) and :meth:`DataPlane.rank`, so
options, limits, errors, ignored features and degraded answers are those of HTTP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.errors import BadRequest
from serving.gateway.dataplane import DataPlane
from serving.gateway.rank_codec import to_rank_request
from serving.ranking.ranker import RankResult
from serving.rpc.calls import Call, rpc
from serving.rpc.stubs import ranking_pb2 as pb
from serving.rpc.stubs import ranking_pb2_grpc as pb_grpc
from serving.settings import Settings
from serving.telemetry.logs import request_id_var
from serving.telemetry.metrics import Metrics
from serving.wire.columns import DictColumn

ROUTE = "/rankserve.ranking.v1.Ranking/Rank"
LISTS: dict[str, Any] = {"int64_values": np.int64, "double_values": np.float64}
RAW: dict[str, np.dtype[Any]] = {"int64_le": np.dtype("<i8"), "float64_le": np.dtype("<f8")}


class RankingService(pb_grpc.RankingServicer):  # type: ignore[misc,name-defined]
    """``Rank`` over one :class:`DataPlane`."""

    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self.plane = plane
        self.settings = settings
        self.metrics = metrics

    @rpc(ROUTE)
    async def Rank(self, request: Any, call: Call) -> Any:
        parsed = to_rank_request(to_document(request),
                                 max_candidates=self.settings.max_candidates,
                                 max_budget_ms=self.settings.max_budget_ms)
        if parsed.request_id is not None:
            call.request_id = parsed.request_id
            request_id_var.set(parsed.request_id)
        result = await self.plane.rank(parsed, call.deadline(parsed.budget_ms))
        return to_response(result, call.request_id)


def to_document(request: Any) -> dict[str, Any]:
    """The ``/v1/rank`` document a ``RankRequest`` stands for (unset fields left out, so
    the HTTP defaults apply).

    Raises:
        BadRequest: a value or column with nothing set, naming it.
    """
    doc: dict[str, Any] = {"user": _values(request.user, "user")}
    if request.request_id:
        doc["request_id"] = request.request_id
    if request.model:
        doc["model"] = request.model
    if request.context:
        doc["context"] = _values(request.context, "context")
    if request.history:
        doc["history"] = list(request.history)
    if request.candidates:
        doc["candidates"] = {name: _column(column, f"candidates.{name}")
                             for name, column in request.candidates.items()}
    if request.top_k:
        doc["top_k"] = request.top_k
    if request.HasField("budget_ms"):
        doc["budget_ms"] = request.budget_ms
    if request.weights:
        doc["weights"] = dict(request.weights)
    if request.return_all_tasks:
        doc["return_tasks"] = True
    elif request.return_tasks:
        doc["return_tasks"] = list(request.return_tasks)
    return doc


def _values(values: Any, where: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            raise BadRequest(f"'{where}.{key}' has no value set", field=f"{where}.{key}")
        out[key] = getattr(value, kind)
    return out


def _column(column: Any, where: str) -> Any:
    """A column as the binary encoding decodes it: numbers as a numpy array (gaps as NaN),
    strings dictionary encoded (one vocabulary lookup per distinct value).

    Raises:
        BadRequest: no values, raw bytes not a whole number of values, or ``missing``
            past the values.
    """
    kind = column.WhichOneof("values")
    if kind is None:
        raise BadRequest(f"'{where}' has no values set", field=where)
    if kind == "dictionary":
        return _dictionary_column(column, where)
    if kind in RAW:
        raw = getattr(column, kind)
        if len(raw) % 8:
            raise BadRequest(f"'{where}.{kind}' must hold 8 bytes per candidate",
                             field=f"{where}.{kind}")
        values: Any = np.frombuffer(raw, dtype=RAW[kind]).astype(RAW[kind].newbyteorder("="))
    elif kind in LISTS:
        values = np.asarray(getattr(column, kind).values, dtype=LISTS[kind])
    else:
        values = getattr(column, kind).values
    missing = list(column.missing)
    if missing and max(missing) >= len(values):
        raise BadRequest(f"'{where}.missing' names a candidate past its {len(values)} values",
                         field=f"{where}.missing")
    if kind == "string_values":
        return _dictionary(values, missing)
    if missing:  # as the binary encoding sends gaps
        values = values.astype(np.float64)
        values[missing] = np.nan
    return values


def _dictionary_column(column: Any, where: str) -> DictColumn:
    """Raises: BadRequest: codes not int32, or outside ``[-1, len(values))``."""
    strings, raw = column.dictionary.values, column.dictionary.codes_le
    if len(raw) % 4:
        raise BadRequest(f"'{where}.dictionary.codes_le' must hold 4 bytes per candidate",
                         field=f"{where}.dictionary.codes_le")
    codes = np.frombuffer(raw, dtype="<i4").astype(np.int32)
    if len(codes) and (codes.min() < -1 or codes.max() >= len(strings)):
        raise BadRequest(f"'{where}.dictionary.codes_le' holds a code outside -1..."
                         f"{len(strings) - 1}", field=f"{where}.dictionary.codes_le")
    missing = list(column.missing)
    if missing:
        if max(missing) >= len(codes):
            raise BadRequest(f"'{where}.missing' names a candidate past its {len(codes)} "
                             f"values", field=f"{where}.missing")
        codes[missing] = -1
    return DictColumn(list(strings), codes)


def _dictionary(values: Any, missing: list[int]) -> DictColumn:
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int32,
                        count=len(values))
    codes[missing] = -1
    return DictColumn(list(index), codes)


def to_response(result: RankResult, request_id: str) -> Any:
    """The ``RankResponse`` of a ranked result (the fields of ``/v1/rank``'s body)."""
    ids = np.asarray(result.ids)
    if ids.dtype.kind in "iu":
        column = pb.Column(int64_le=ids.astype("<i8").tobytes())
    elif ids.dtype.kind == "f":
        column = pb.Column(float64_le=ids.astype("<f8").tobytes())
    else:
        column = pb.Column(string_values=pb.StringList(values=[str(i) for i in ids]))
    return pb.RankResponse(
        request_id=request_id, model=result.model.name, model_version=result.model.version,
        degraded=result.degraded, id_field=result.id_field, ids=column,
        scores=np.asarray(result.scores, dtype=np.float64).tolist(),
        probs={task: pb.FloatList(values=np.asarray(p).tolist())
               for task, p in result.probs.items()},
        ignored_features=result.ignored,
        timings={k: float(v) for k, v in result.timings.items()})
