"""``/v1/rank`` bodies: a decoded JSON document -> :class:`RankRequest`, and the response.

Row-wise JSON (``candidates`` is a list of objects) and columnar JSON (``candidates`` is an
object of equal-length lists) are both parsed with orjson and meet in one columnar
:class:`RankRequest`; the binary encoding (:mod:`serving.wire.columns`) produces the
same document shape with numpy columns. Options are validated here, each error naming its
field; feature values are validated by the feature encoder. The rules every route shares
(body, budget, request id) are :mod:`serving.gateway.rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from serving.errors import BadRequest, InvalidFeature, MissingFeature, PayloadTooLarge
from serving.gateway.rules import MAX_REQUEST_ID, parse_budget, valid_request_id
from serving.ranking.features import columns_from_rows
from serving.ranking.ranker import RankRequest, RankResult
from serving.wire import columns as columns_codec

FIELDS = frozenset({"request_id", "model", "user", "context", "history", "candidates",
                    "top_k", "budget_ms", "weights", "return_tasks"})
MAX_OBJECT_FIELDS = 1024
"""Most keys in ``user`` or ``context``: a few dozen are features, the rest are ignored, and
each one costs work per request (the encoder copies the object), so past this the request
is refused before any of that work."""
PROBS_PREFIX = "probs."
"""Binary responses name each task's probability column ``probs.<task>``."""


def _object(doc: Mapping[str, Any], name: str, required: bool) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        if required:
            raise MissingFeature(f"'{name}' is required", field=name)
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{name}' must be an object", field=name)
    if len(value) > MAX_OBJECT_FIELDS:
        raise PayloadTooLarge(f"'{name}' has {len(value)} keys; at most {MAX_OBJECT_FIELDS}",
                              field=name)
    for key, item in value.items():
        if isinstance(item, (list, dict)):
            raise InvalidFeature(f"'{name}.{key}' must be a single value", field=f"{name}.{key}")
    return value


def _candidates(doc: Mapping[str, Any], max_candidates: int) -> tuple[Mapping[str, Any], int]:
    raw = doc.get("candidates")
    if raw is None:
        raise MissingFeature("'candidates' is required", field="candidates")
    if isinstance(raw, list):
        n = len(raw)
        if n > max_candidates:
            raise PayloadTooLarge(f"{n} candidates; at most {max_candidates} per request",
                                  field="candidates")
        columns: Mapping[str, Any] = columns_from_rows(raw, "item")
    elif isinstance(raw, dict):
        n, columns = _column_rows(raw), raw
    else:
        raise BadRequest("'candidates' must be a list of objects or an object of columns",
                         field="candidates")
    if n == 0:
        raise BadRequest("'candidates' is empty", field="candidates")
    if n > max_candidates:
        raise PayloadTooLarge(f"{n} candidates; at most {max_candidates} per request",
                              field="candidates")
    return columns, n


def _column_rows(columns: Mapping[str, Any]) -> int:
    """The candidate count of a columnar body: every column's length, which must agree
    (which columns the model needs, its candidate id among them, is the encoder's check)."""
    n = None
    for name, column in columns.items():
        if isinstance(column, (str, bytes, dict)) or not hasattr(column, "__len__"):
            raise InvalidFeature(f"'candidates.{name}' must be a list",
                                 field=f"candidates.{name}")
        if n is None:
            n = len(column)
        elif len(column) != n:
            raise InvalidFeature(f"'candidates.{name}' has {len(column)} values, "
                                 f"'candidates.{next(iter(columns))}' {n}: every column "
                                 f"needs one per candidate", field=f"candidates.{name}")
    return n or 0


def _positive_int(doc: Mapping[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer", field=name)
    return value


def to_rank_request(doc: Mapping[str, Any], *, max_candidates: int,
                    max_budget_ms: float) -> RankRequest:
    """Validate a decoded document's structure and options.

    Raises:
        BadRequest, MissingFeature, InvalidFeature: naming the field.
        PayloadTooLarge: more candidates than ``max_candidates``.
    """
    for name in doc:
        if name not in FIELDS:
            raise BadRequest(f"unknown field '{name}'", field=name)
    request_id = doc.get("request_id")
    if request_id is not None and not valid_request_id(request_id):
        raise BadRequest(f"'request_id' must be a string of 1..{MAX_REQUEST_ID} printable "
                         f"ASCII characters", field="request_id")
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", field="model")
    user = _object(doc, "user", required=True)
    context = _object(doc, "context", required=False)
    columns, n = _candidates(doc, max_candidates)
    return RankRequest(
        user=user, candidates=columns, n=n, context=context, history=doc.get("history"),
        model=model, top_k=_positive_int(doc, "top_k"),
        budget_ms=parse_budget(doc.get("budget_ms"), "budget_ms", max_budget_ms),
        weights=doc.get("weights"), return_tasks=doc.get("return_tasks"),
        request_id=request_id)


def _head(result: RankResult, request_id: str) -> dict[str, Any]:
    """What every response encoding carries besides the ranked arrays."""
    head: dict[str, Any] = {
        "request_id": request_id,
        "model": {"name": result.model.name, "version": result.model.version},
        "degraded": result.degraded,
        "timings": result.timings,
    }
    if result.ignored:
        head["ignored_features"] = result.ignored
    return head


def encode_response(result: RankResult, request_id: str) -> bytes:
    """The ``/v1/rank`` JSON response body (see docs/api.md).

    The arrays go to orjson as numpy arrays (no Python object per candidate).
    Probabilities are widened to float64 before serialising so each JSON number is exactly
    the model's float32 value.
    """
    body = _head(result, request_id)
    body[result.id_field] = np.ascontiguousarray(result.ids)
    body["score"] = np.ascontiguousarray(result.scores)
    if result.probs:
        body["probs"] = {task: np.ascontiguousarray(p, dtype=np.float64)
                         for task, p in result.probs.items()}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_response_columns(result: RankResult, request_id: str) -> bytes:
    """The ``/v1/rank`` response in the binary column encoding (``Accept:
    application/x-rankserve-columns``; layout in :mod:`serving.wire.columns`): the ranked
    ids, scores and probabilities as raw little-endian arrays (probabilities as the
    model's float32, exact), each column ``probs.<task>``."""
    columns: dict[str, np.ndarray] = {result.id_field: result.ids, "score": result.scores}
    columns.update({f"{PROBS_PREFIX}{task}": p for task, p in result.probs.items()})
    return columns_codec.encode(_head(result, request_id), columns)


def wants_columns(accept: str) -> bool:
    """Whether an ``Accept`` header asks for the binary column encoding (listed with a
    ``q`` above 0); anything else gets JSON."""
    for media_range in accept.split(","):
        kind, _, params = media_range.partition(";")
        if kind.strip().lower() != columns_codec.CONTENT_TYPE:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        return q > 0
    return False
