"""``/v1/rank`` bodies: a decoded JSON document -> :class:`RankRequest`, and the response.

Row-wise JSON (``candidates`` is a list of objects) and columnar JSON (``candidates`` is an
object of equal-length lists) are both parsed with orjson and meet in one columnar
:class:`RankRequest`; the binary encoding (:mod:`serving.gateway.columns_codec`) produces the
same document shape with numpy columns. Options are validated here, each error naming its
field; feature values are validated by the feature encoder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from serving.errors import BadRequest, InvalidFeature, MissingFeature, PayloadTooLarge
from serving.gateway.ranker import RankRequest, RankResult
from serving.ranking.features import columns_from_rows

FIELDS = frozenset({"request_id", "model", "user", "context", "history", "candidates",
                    "top_k", "budget_ms", "weights", "return_tasks"})
MAX_REQUEST_ID = 128
REQUEST_ID_PATTERN = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID}}}")
"""Printable ASCII: the id is echoed in the ``X-Request-Id`` response header, where a
control character would make the response unwritable and other text would be mangled."""


def valid_request_id(value: object) -> bool:
    return isinstance(value, str) and REQUEST_ID_PATTERN.fullmatch(value) is not None


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object.

    Raises:
        BadRequest: not JSON (NaN and Infinity literals included) or not an object.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}", field="body") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object", field="body")
    return doc


def _object(doc: Mapping[str, Any], name: str, required: bool) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        if required:
            raise MissingFeature(f"'{name}' is required", field=name)
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"'{name}' must be an object", field=name)
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
        ids = raw.get("video_id")
        if ids is None:
            raise MissingFeature("required feature 'candidates.video_id' is missing",
                                 field="candidates.video_id")
        if not isinstance(ids, (list, np.ndarray)):
            raise InvalidFeature("'candidates.video_id' must be a list",
                                 field="candidates.video_id")
        n, columns = len(ids), raw
    else:
        raise BadRequest("'candidates' must be a list of objects or an object of columns",
                         field="candidates")
    if n == 0:
        raise BadRequest("'candidates' is empty", field="candidates")
    if n > max_candidates:
        raise PayloadTooLarge(f"{n} candidates; at most {max_candidates} per request",
                              field="candidates")
    return columns, n


def _positive_int(doc: Mapping[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer", field=name)
    return value


def parse_budget(value: Any, field: str, max_budget_ms: float) -> float | None:
    """A budget in ms from the body or the ``X-Request-Budget-Ms`` header (a string).

    Raises:
        BadRequest: not a positive finite number up to ``max_budget_ms``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            if not value.isascii():  # float() reads other scripts' digits: "٣" is 3.0
                raise ValueError(value)
            value = float(value)
        except ValueError:
            raise BadRequest(f"'{field}' must be a number of milliseconds",
                             field=field) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= max_budget_ms:
        raise BadRequest(f"'{field}' must be a number of milliseconds in (0, {max_budget_ms}]",
                         field=field)
    return float(value)


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


def encode_response(result: RankResult, request_id: str) -> bytes:
    """The ``/v1/rank`` response body (see docs/api.md).

    Probabilities are widened to float64 before serialising so each JSON number is exactly
    the model's float32 value.
    """
    body = {
        "request_id": request_id,
        "model": {"name": result.model.name, "version": result.model.version},
        "degraded": result.degraded,
        "video_id": np.ascontiguousarray(result.video_ids),
        "score": np.ascontiguousarray(result.scores),
        "timings": result.timings,
    }
    if result.probs:
        body["probs"] = {task: np.ascontiguousarray(p, dtype=np.float64)
                         for task, p in result.probs.items()}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
