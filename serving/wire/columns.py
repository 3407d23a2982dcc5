"""The binary ``/v1/rank`` encoding, ``application/x-rankserve-columns``: encode and decode.

Layout (all integers little-endian)::

    bytes 0..3   magic  b"RSC1"
    bytes 4..7   uint32 H, the length of the JSON header
    bytes 8..    the JSON header (UTF-8, H bytes)
    then         one payload per column, in header order, each starting at an offset
                 that is a multiple of 8 from the start of the body

The header is the ``/v1/rank`` JSON document with ``candidates`` replaced by ``n`` (the
candidate count) and ``columns``: a list of ``{"name", "dtype"}`` where ``dtype`` is one of
``i4 i8 f4 f8`` (payload: ``n`` raw values) or ``dict`` (a string column, dictionary
encoded: ``"values": [distinct strings]``, payload: ``n`` int32 codes into ``values``, -1
for missing). Numeric columns use NaN for a missing value. The server reads each column
with one ``numpy.frombuffer`` call, never parsing numbers one by one.

Responses (``Accept: application/x-rankserve-columns``) use the same layout: the header
is the JSON response without its arrays, plus ``n`` and ``columns`` for the ranked ids,
``score`` and one ``probs.<task>`` column per task asked for.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from serving.errors import BadRequest

CONTENT_TYPE = "application/x-rankserve-columns"
MAGIC = b"RSC1"
_PREFIX = struct.Struct("<4sI")
DTYPES: dict[str, np.dtype[Any]] = {"i4": np.dtype("<i4"), "i8": np.dtype("<i8"),
                                    "f4": np.dtype("<f4"), "f8": np.dtype("<f8"),
                                    "dict": np.dtype("<i4")}
_NUMPY_KINDS = {np.dtype(np.int32): "i4", np.dtype(np.int64): "i8",
                np.dtype(np.float32): "f4", np.dtype(np.float64): "f8"}


@dataclass(frozen=True)
class DictColumn:
    """A dictionary-encoded string column: row ``i`` is ``values[codes[i]]``, code -1 is
    missing. The binary request encoding carries strings this way, so a vocabulary lookup
    runs once per distinct value instead of once per row."""

    values: Sequence[str]
    codes: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.codes)


def _align(offset: int) -> int:
    return (offset + 7) & ~7


def encode(document: Mapping[str, Any],
           candidates: Mapping[str, Sequence[Any] | np.ndarray]) -> bytes:
    """A binary body from the request ``document`` (without candidates) and its columns.

    Integer and float columns (numpy arrays or lists) are sent raw; columns holding strings
    are dictionary encoded. Lists of Python ints become int64, of floats float64.
    """
    columns: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    n = None
    for name, raw in candidates.items():
        spec, payload = _encode_column(name, raw)
        n = len(raw) if n is None else n
        columns.append(spec)
        payloads.append(payload)
    header = orjson.dumps({**document, "n": n or 0, "columns": columns})
    out = bytearray(_PREFIX.pack(MAGIC, len(header)))
    out += header
    for payload in payloads:
        out += b"\0" * (_align(len(out)) - len(out))
        out += payload
    return bytes(out)


def _encode_column(name: str, raw: Sequence[Any] | np.ndarray) -> tuple[dict[str, Any], bytes]:
    array = raw if isinstance(raw, np.ndarray) else None
    if array is None and not any(isinstance(v, str) for v in raw):
        has_float = any(isinstance(v, float) or v is None for v in raw)
        array = np.array([np.nan if v is None else v for v in raw],
                         dtype=np.float64 if has_float else np.int64)
    if array is not None and array.dtype in _NUMPY_KINDS:
        kind = _NUMPY_KINDS[array.dtype]
        return {"name": name, "dtype": kind}, np.ascontiguousarray(array, DTYPES[kind]).tobytes()
    values = sorted({str(v) for v in raw if v is not None})
    index = {v: i for i, v in enumerate(values)}
    codes = np.array([-1 if v is None else index[str(v)] for v in raw], dtype="<i4")
    return {"name": name, "dtype": "dict", "values": values}, codes.tobytes()


def decode(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request document (without candidates) and its candidate columns.

    Raises:
        BadRequest: bad magic, truncated body, malformed header or column, naming the field.
    """
    if len(body) < _PREFIX.size:
        raise BadRequest("binary body is shorter than its 8-byte prefix", field="body")
    magic, header_length = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise BadRequest(f"binary body must start with {MAGIC!r}", field="body")
    end = _PREFIX.size + header_length
    if end > len(body):
        raise BadRequest("binary header runs past the end of the body", field="body")
    try:
        header = orjson.loads(body[_PREFIX.size:end])
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"binary header is not valid JSON: {e}", field="header") from None
    if not isinstance(header, dict):
        raise BadRequest("binary header must be a JSON object", field="header")
    n = header.pop("n", None)
    specs = header.pop("columns", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise BadRequest("'n' must be the candidate count", field="n")
    if not isinstance(specs, list):
        raise BadRequest("'columns' must be a list of column descriptions", field="columns")
    columns: dict[str, Any] = {}
    offset = end
    for i, spec in enumerate(specs):
        name, column, offset = _decode_column(body, spec, i, n, offset)
        columns[name] = column
    if _align(offset) < len(body):
        raise BadRequest("binary body has bytes after its last column", field="body")
    return header, columns


def _decode_column(body: bytes, spec: Any, i: int, n: int, offset: int
                   ) -> tuple[str, Any, int]:
    where = f"columns[{i}]"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest(f"'{where}' must be an object with a name", field=where)
    name, kind = spec["name"], spec.get("dtype")
    if kind not in DTYPES:
        raise BadRequest(f"'{where}.dtype' must be one of {sorted(DTYPES)}",
                         field=f"candidates.{name}")
    dtype = DTYPES[kind]
    start = _align(offset)
    stop = start + n * dtype.itemsize
    if stop > len(body):
        raise BadRequest(f"column '{name}' runs past the end of the body",
                         field=f"candidates.{name}")
    values = np.frombuffer(body, dtype=dtype, count=n, offset=start)
    if kind != "dict":
        return name, values, stop
    strings = spec.get("values")
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise BadRequest(f"'{where}.values' must be a list of strings",
                         field=f"candidates.{name}")
    if n and (values.min() < -1 or values.max() >= len(strings)):
        raise BadRequest(f"column '{name}' has codes outside its values",
                         field=f"candidates.{name}")
    return name, DictColumn(strings, values), stop
