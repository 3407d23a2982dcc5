"""Bad input, generated: property-based requests over the ``/v1/rank`` and ``/v2`` schemas
and raw byte fuzzing of bodies and headers, against one real gateway over loopback HTTP.

Property for every input: the gateway answers (it never crashes or hangs), never with a
5xx, and every 4xx is JSON carrying a code that docs/api.md documents for its status.
Inputs start from real held-out requests and real model tensors and are then broken:
well-typed but wrong values, wrong structure, extreme and huge numbers, unicode, NaN and
infinity (JSON literals and binary floats), truncation, random bytes, bogus content types,
lengths and budget headers. Hypothesis runs derandomized with no example database, so CI
sees the same inputs every time; ``EXAMPLES`` sums to at least 10,000 requests.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.client import encode_request
from serving.gateway import v2_codec
from serving.wire.columns import CONTENT_TYPE as COLUMNS
from tests.reliability.live_gateway import LiveGateway, live_gateway

EXAMPLES = {"v1_mutated": 1500, "v1_structure": 700, "v1_binary": 800, "v2_json": 800,
            "v2_binary": 600, "bytes": 2800, "truncated": 2000, "headers": 1300}
MAX_CANDIDATES = 64
TIGHT_BUDGET_MS = 50.0
JSON = {"Content-Type": "application/json"}


def examples(name: str) -> Any:
    return settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    yield from live_gateway(max_candidates=MAX_CANDIDATES, max_body_bytes=256 * 1024)


@pytest.fixture(scope="module")
def docs(heldout: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Real held-out requests, cut to at most 16 candidates (scoring stays cheap)."""
    return [{**d, "candidates": d["candidates"][:16], "budget_ms": 10_000}
            for d in heldout[:20]]


# -- values ----------------------------------------------------------------------------------

HUGE = st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 2**31, 1e308, -1e308,
                        5e-324, -0.0])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), HUGE,
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
OPTIONS = {"top_k": VALUES, "budget_ms": VALUES, "weights": VALUES, "return_tasks": VALUES,
           "model": VALUES, "request_id": VALUES, "history": VALUES, "context": VALUES}


def printable(text: str) -> str:
    """``text`` without the control characters HTTP forbids in a header value (aiohttp's
    parser answers those with a bare 400 before the gateway sees a request; see
    test_security.py)."""
    return "".join(c for c in text if c == "\t" or " " <= c != "\x7f")


def tiny_budget(*values: Any) -> bool:
    """Whether any of the budgets given (ms; numbers or ASCII header strings) is positive
    but at most ``TIGHT_BUDGET_MS``: a valid budget this shared machine may not meet even
    for one request, answered 504 ``deadline_exceeded`` by design (docs/api.md)."""
    for value in values:
        if isinstance(value, str) and not value.isascii():
            continue
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            continue
        if 0 < number <= TIGHT_BUDGET_MS:
            return True
    return False


def dumps(doc: Any) -> bytes:
    """JSON as a careless client writes it: NaN/Infinity literals and any size of integer
    pass (the standard library allows both; the gateway must refuse them cleanly)."""
    return json.dumps(doc, allow_nan=True).encode()


def post_v1(gateway: LiveGateway, body: bytes, headers: dict[str, str | bytes],
            context: object, budgets: tuple[Any, ...] = ()) -> None:
    gateway.check(gateway.request("POST", "/v1/rank", body, headers), context,
                  allow_504=tiny_budget(*budgets))


# -- /v1/rank --------------------------------------------------------------------------------

def mutate(doc: dict[str, Any], data: st.DataObject) -> None:
    """Replace, delete or add one value somewhere in ``doc`` (a real request)."""
    where = data.draw(st.sampled_from(["top", "user", "candidate", "columns", "history"]))
    value = data.draw(VALUES)
    rows = doc.get("candidates")
    rowwise = isinstance(rows, list) and rows and all(isinstance(r, dict) and r for r in rows)
    if (where == "user" and not isinstance(doc.get("user"), dict)) \
            or (where in ("candidate", "columns") and not rowwise):
        where = "top"
    if where == "top":
        key = data.draw(st.sampled_from([*OPTIONS, "user", "candidates"]) | st.text(max_size=6))
        doc[key] = value
    elif where == "user":
        user = dict(doc["user"])
        known = st.sampled_from(sorted(user)) if user else st.nothing()  # all popped before
        key = data.draw(known | st.text(max_size=6))
        if data.draw(st.booleans()):
            user[key] = value
        else:
            user.pop(key, None)
        doc["user"] = user
    elif where == "candidate":
        rows = [dict(r) for r in rows]
        row = rows[data.draw(st.integers(0, len(rows) - 1))]
        key = data.draw(st.sampled_from(sorted(row)) | st.text(max_size=6))
        row[key] = value
        doc["candidates"] = rows
    elif where == "columns":
        columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        key = data.draw(st.sampled_from(sorted(columns)))
        columns[key] = data.draw(st.lists(SCALARS, max_size=len(rows) + 1) | VALUES)
        doc["candidates"] = columns
    else:
        doc["history"] = data.draw(st.lists(SCALARS, max_size=30))


@given(data=st.data())
@examples("v1_mutated")
def test_v1_mutated_real_requests(gateway: LiveGateway, docs: list[dict[str, Any]],
                                  data: st.DataObject) -> None:
    doc = dict(data.draw(st.sampled_from(docs)))
    for _ in range(data.draw(st.integers(1, 3))):
        mutate(doc, data)
    post_v1(gateway, dumps(doc), JSON, doc, (doc.get("budget_ms"),))


@given(doc=VALUES | st.dictionaries(st.sampled_from([*OPTIONS, "user", "candidates"]),
                                    VALUES, max_size=6),
       content_type=st.sampled_from(["application/json", "text/json", ""]))
@examples("v1_structure")
def test_v1_structurally_wrong(gateway: LiveGateway, doc: Any, content_type: str) -> None:
    budget = doc.get("budget_ms") if isinstance(doc, dict) else None
    post_v1(gateway, dumps(doc), {"Content-Type": content_type}, doc, (budget,))


NUMERIC = st.sampled_from(["<f4", "<f8", "<i4", "<i8"])
COLUMN_NAMES = st.sampled_from(["video_id", "author_id", "duration_ms", "music_id",
                                "video_type", "upload_type", "tag"]) | st.text(max_size=6)


SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, 2.0**63,
                    -(2.0**63), 2.0**31, 1.0, -1.0])


def numbers(seed: int, count: int, dtype: np.dtype[Any]) -> np.ndarray:
    """``count`` values of ``dtype`` from ``seed``: ordinary ones mixed with extremes (NaN,
    infinities, huge, tiny, negative zero; integer extremes for integer dtypes). Hypothesis
    draws the seed, numpy fills the array: cheap enough for thousands of examples."""
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        values = np.where(rng.random(count) < 0.3, rng.choice(SPECIAL, count),
                          rng.normal(0, 1e4, count))
        with np.errstate(all="ignore"):
            return values.astype(dtype)
    info = np.iinfo(dtype)
    extremes = np.clip(np.array([info.min, info.max, -1, 0, 1, 2**31 - 1], dtype=np.int64),
                       info.min, info.max)
    ordinary = rng.integers(-1000, 10**7, count, dtype=np.int64)
    return np.where(rng.random(count) < 0.3, rng.choice(extremes, count),
                    ordinary).astype(dtype)


@st.composite
def binary_columns(draw: st.DrawFn, n: int) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for name in draw(st.lists(COLUMN_NAMES, min_size=1, max_size=4, unique=True)):
        rows = draw(st.sampled_from([n, n, n, n + 1, max(n - 1, 0)]))
        if draw(st.booleans()):
            columns[name] = numbers(draw(st.integers(0, 2**32 - 1)), rows,
                                    np.dtype(draw(NUMERIC)))
        else:
            columns[name] = draw(st.lists(st.text(max_size=5) | st.none(), min_size=rows,
                                          max_size=rows))
    return columns


@given(data=st.data())
@examples("v1_binary")
def test_v1_binary_columns(gateway: LiveGateway, docs: list[dict[str, Any]],
                           data: st.DataObject) -> None:
    doc = dict(data.draw(st.sampled_from(docs)))
    n = data.draw(st.sampled_from([0, 1, 2, 16, MAX_CANDIDATES, MAX_CANDIDATES + 1]))
    columns = data.draw(binary_columns(n))
    if data.draw(st.booleans()):
        mutate(doc, data)
    header = {k: v for k, v in doc.items() if k != "candidates"}
    try:
        body, content_type = encode_request({**header, "candidates": columns}, "binary")
    except (TypeError, ValueError):  # the client refuses what JSON cannot carry
        return
    post_v1(gateway, body, {"Content-Type": content_type}, (header, columns),
            (header.get("budget_ms"),))


# -- /v2 -------------------------------------------------------------------------------------

DATATYPES = st.sampled_from(["INT64", "FP32", "INT32", "FP64", "BOOL", "BYTES", "FP16"])


def model_inputs(gateway: LiveGateway) -> list[dict[str, Any]]:
    from serving.gateway.keys import DATA_PLANE
    model = gateway.app[DATA_PLANE].model("feed_ranker")
    return [t.to_metadata() for t in model.inputs]


@st.composite
def v2_inputs(draw: st.DrawFn, specs: list[dict[str, Any]], binary: bool
              ) -> tuple[list[dict[str, Any]], bytes]:
    users, items = draw(st.integers(0, 3)), draw(st.integers(0, 40))
    entries: list[dict[str, Any]] = []
    blobs = b""
    for spec in draw(st.permutations(specs)):
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing input
        rows = users if spec["name"] in ("user_id", "user_cat", "user_num", "history") \
            else items
        shape = [rows, *spec["shape"][1:]]
        if draw(st.integers(0, 4)) == 0:
            shape = draw(st.lists(st.integers(-2, 2**40) | HUGE, max_size=3))
        datatype = spec["datatype"] if draw(st.integers(0, 5)) else draw(DATATYPES)
        entry: dict[str, Any] = {"name": spec["name"] if draw(st.integers(0, 9))
                                 else draw(st.text(max_size=8)),
                                 "datatype": datatype, "shape": shape}
        count = int(np.prod(shape)) if all(isinstance(d, int) and 0 <= d < 4096
                                           for d in shape) else 3
        count = min(count, 4096)
        dtype = np.dtype(np.float32 if spec["datatype"] == "FP32" else np.int64)
        if binary:
            blob = numbers(draw(st.integers(0, 2**32 - 1)), count, dtype).tobytes()
            size = len(blob) + draw(st.sampled_from([0, 0, 0, 1, -1, 8, 2**40]))
            entry["parameters"] = {"binary_data_size": size}
            blobs += blob
        else:
            kind = draw(st.sampled_from(["numbers", "numbers", "json"]))
            entry["data"] = numbers(draw(st.integers(0, 2**32 - 1)), count, dtype).tolist() \
                if kind == "numbers" else draw(VALUES)
        entries.append(entry)
    return entries, blobs


MODEL_PATHS = st.sampled_from(["feed_ranker", "feed_ranker/versions/1",
                               "feed_ranker/versions/2", "nope", "..%2F..%2Fetc"]) \
    | st.text(min_size=1, max_size=12).map(lambda s: urllib.parse.quote(s, safe=""))


@given(data=st.data())
@examples("v2_json")
def test_v2_json_infer(gateway: LiveGateway, data: st.DataObject) -> None:
    inputs, _ = data.draw(v2_inputs(model_inputs(gateway), binary=False))
    doc: dict[str, Any] = {"inputs": inputs}
    if data.draw(st.booleans()):
        doc["outputs"] = data.draw(st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["probs", "nope"])}) | VALUES, max_size=2))
    if data.draw(st.booleans()):
        doc["parameters"] = data.draw(st.dictionaries(
            st.sampled_from(["timeout", "binary_data_output", "x"]), SCALARS, max_size=2)
            | VALUES)
    if data.draw(st.booleans()):
        doc["id"] = data.draw(VALUES)
    path = f"/v2/models/{data.draw(MODEL_PATHS)}/infer"
    parameters = doc.get("parameters")
    timeout_us = parameters.get("timeout") if isinstance(parameters, dict) else None
    budget_ms = timeout_us / 1e3 if isinstance(timeout_us, (int, float)) else None
    gateway.check(gateway.request("POST", path, dumps(doc), JSON), doc,
                  allow_504=tiny_budget(budget_ms))


@given(data=st.data())
@examples("v2_binary")
def test_v2_binary_infer(gateway: LiveGateway, data: st.DataObject) -> None:
    inputs, blobs = data.draw(v2_inputs(model_inputs(gateway), binary=True))
    head = dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    length = data.draw(st.sampled_from([str(len(head))] * 4 + ["-1", "abc", "0", "1e3",
                                                               str(len(head) + 1), "9" * 30]))
    answer = gateway.request("POST", "/v2/models/feed_ranker/infer", head + blobs,
                             {"Content-Type": "application/octet-stream",
                              v2_codec.HEADER_LENGTH: length})
    gateway.check(answer, inputs)


# -- raw bytes and headers -------------------------------------------------------------------

PATHS = st.sampled_from(["/v1/rank", "/v2/models/feed_ranker/infer"])
CONTENT_TYPES = st.sampled_from(["application/json", COLUMNS, "application/octet-stream",
                                 "text/plain", "", "application/json; charset=latin-1",
                                 "multipart/form-data; boundary=x"]) | st.text(max_size=20)


@given(path=PATHS, body=st.binary(max_size=2048), content_type=CONTENT_TYPES)
@examples("bytes")
def test_random_bytes(gateway: LiveGateway, path: str, body: bytes,
                      content_type: str) -> None:
    gateway.check(gateway.request("POST", path, body,
                                  {"Content-Type": printable(content_type)}), body[:100])


@given(data=st.data())
@examples("truncated")
def test_truncated_and_flipped_valid_bodies(gateway: LiveGateway, docs: list[dict[str, Any]],
                                            data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(docs))
    encoding = data.draw(st.sampled_from(["json", "columnar", "binary"]))
    body, content_type = encode_request(doc, encoding)
    cut = data.draw(st.integers(0, len(body)))
    broken = bytearray(body[:cut])
    for _ in range(data.draw(st.integers(0, 3))):
        if broken:
            i = data.draw(st.integers(0, len(broken) - 1))
            broken[i] ^= 1 << data.draw(st.integers(0, 7))
    post_v1(gateway, bytes(broken), {"Content-Type": content_type}, (encoding, cut))


HEADER_VALUES = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e309", "-0", "0", "1e-320",
                                 "10001", "10000", " 5 ", "5ms", "0x10", "1_000", "",
                                 "٣", "५०"]) | st.text(max_size=16) \
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)


@given(data=st.data())
@examples("headers")
def test_bogus_headers(gateway: LiveGateway, docs: list[dict[str, Any]],
                       data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(docs))
    body = dumps({k: v for k, v in doc.items() if k != "budget_ms"})
    names = ["X-Request-Budget-Ms", "Content-Type", "X-Request-Id", "Authorization",
             v2_codec.HEADER_LENGTH, "Content-Encoding", "Accept"]
    headers: dict[str, str | bytes] = dict(JSON)
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)):
        value = data.draw(HEADER_VALUES)
        headers[name] = printable(value).encode("utf-8")
    post_v1(gateway, body, headers, headers,
            (headers.get("X-Request-Budget-Ms", b"").decode(),))


def test_the_fuzzers_send_at_least_10000_inputs() -> None:
    assert sum(EXAMPLES.values()) >= 10_000
