"""No 5xx from bad input: each class below was a 500 or 502 (or silently misread) before.
Every answer is checked against the error contract (JSON, documented code, request id)
over real loopback HTTP, and a valid request after each one still scores."""

from __future__ import annotations

import gzip
import urllib.parse
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from serving.gateway import v2_codec
from tests.reliability.live_gateway import LiveGateway, error_of, live_gateway
from tests.reliability.test_row_limits import ranker_body

JSON = {"Content-Type": "application/json"}
ADMIN_TOKEN = "admin-secret"
ADMIN = {**JSON, "Authorization": f"Bearer {ADMIN_TOKEN}"}
VALID = orjson.dumps({"user": {"user_id": 1}, "candidates": [{"video_id": 1}]})
INFER = "/v2/models/feed_ranker/infer"
BAD_VERSIONS = ["²", "①", "١", "1" * 5000, "0" * 4000 + "1", "9" * 20, "-1", "+1", " 1"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    yield from live_gateway(admin_enabled=True, admin_token=ADMIN_TOKEN)


def still_serves(gateway: LiveGateway) -> None:
    assert gateway.request("POST", "/v1/rank", VALID, JSON).status == 200


def refused(gateway: LiveGateway, status: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str | bytes] | None = None, field: str | None = None) -> None:
    answer = gateway.check(gateway.request(method, path, body, headers or JSON), path)
    assert answer.status == status, (path, answer.status, answer.body[:200])
    if field is not None:
        assert error_of(answer.json())["field"] == field, answer.body[:200]
    still_serves(gateway)


def ranker_doc() -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(ranker_body(1, 2))
    return doc


def entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in doc["inputs"] if e["name"] == name)


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_version_path_segments_are_ascii_int64(gateway: LiveGateway, version: str) -> None:
    base = f"/v2/models/feed_ranker/versions/{urllib.parse.quote(version)}"
    for method, path, body in (("GET", base, b""), ("GET", base + "/ready", b""),
                               ("POST", base + "/infer", ranker_body(1, 2))):
        refused(gateway, 404, method, path, body, field="version")


@pytest.mark.parametrize("version", [*BAD_VERSIONS, 2**63, 18446744073709551615, 1.0, 1e30,
                                     True, 0])
def test_admin_versions_are_ascii_int64(gateway: LiveGateway, version: object) -> None:
    for action in ("load", "unload"):
        refused(gateway, 400, "POST", f"/admin/models/feed_ranker/{action}",
                orjson.dumps({"version": version}), ADMIN, field="version")


@pytest.mark.parametrize("value", ["1_000", "١٠٠", "1 00", "nan", "1e3", "+5", "0x10",
                                   "5" * 5000])
def test_budget_header_digits_are_ascii(gateway: LiveGateway, value: str) -> None:
    refused(gateway, 400, "POST", "/v1/rank", VALID, {**JSON, "X-Request-Budget-Ms": value},
            field="X-Request-Budget-Ms")


def test_header_length_digits_are_ascii(gateway: LiveGateway) -> None:
    head = orjson.dumps(ranker_doc())
    digits = str(len(head))  # int() reads each of these as this length
    lengths = [digits.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")), "_".join(digits),
               f"+{digits}", "0" * 5000 + digits]
    for length in lengths:
        refused(gateway, 400, "POST", INFER, head,
                {**JSON, v2_codec.HEADER_LENGTH: length}, field=v2_codec.HEADER_LENGTH)
    answer = gateway.request("POST", INFER, head, {**JSON, v2_codec.HEADER_LENGTH:
                                                   str(len(head))})
    assert answer.status == 200, answer.body[:200]


def _set(**fields: Any) -> Any:
    return lambda doc, item: item.update(fields)


def _set_doc(**fields: Any) -> Any:
    return lambda doc, item: doc.update(fields)


def _binary_size(size: object) -> Any:
    return lambda doc, item: (item.pop("data"), item.update(
        parameters={"binary_data_size": size}))


CHANGES: dict[str, Any] = {
    "input parameters a list": _set(parameters=[1]),
    "input parameters a string": _set(parameters="binary"),
    "output parameters a list": _set_doc(outputs=[{"name": "probs", "parameters": [True]}]),
    "output name a list": _set_doc(outputs=[{"name": ["probs"]}]),
    "binary_data a string": _set_doc(outputs=[{"name": "probs",
                                               "parameters": {"binary_data": "false"}}]),
    "binary_data_size float": _binary_size(16.0),
    "binary_data_size string": _binary_size("16"),
    "binary_data_size bool": _binary_size(True),
    "shape overflowing int64": _set(shape=[2**32, 2**32], data=[]),  # np.prod wraps to 0
    "shape of huge dims": _set(shape="HUGE"),
    "timeout true": _set_doc(parameters={"timeout": True}),
    "timeout string": _set_doc(parameters={"timeout": "1000"}),
    "timeout negative": _set_doc(parameters={"timeout": -5}),
    "timeout list": _set_doc(parameters={"timeout": [1]}),
    "INT64 data strings": _set(data=["1", "2"]),
    "INT64 data fractions": _set(data=[1.7, 2.0]),
    "INT64 data booleans": _set(data=[True, False]),
    "INT64 data nested": _set(data=[[1], [2]]),
    "INT64 data nulls": _set(data=[None, 1]),
    "duplicate input": lambda doc, item: doc["inputs"].append(dict(item)),
    "parameters a list": _set_doc(parameters=[1]),
}


def _with(change: str) -> bytes:
    doc = ranker_doc()
    CHANGES[change](doc, entry(doc, "item_id"))
    return orjson.dumps(doc).replace(b'"HUGE"', b"[1180591620717411303424]")


V2_CHANGES = list(CHANGES)


@pytest.mark.parametrize("change", V2_CHANGES)
def test_v2_infer_refuses_malformed_tensors(gateway: LiveGateway, change: str) -> None:
    refused(gateway, 400, "POST", INFER, _with(change))


def test_a_valid_v2_request_still_scores(gateway: LiveGateway) -> None:
    answer = gateway.check(gateway.request("POST", INFER, ranker_body(1, 2), JSON))
    assert answer.status == 200


def test_v2_with_no_rows_is_refused_before_the_model(gateway: LiveGateway) -> None:
    for users, items in ((0, 0), (1, 0)):
        refused(gateway, 400, "POST", INFER, ranker_body(users, items), field="inputs.item_id")


@pytest.mark.parametrize(("encoding", "body"), [
    ("gzip", b"not gzip at all"), ("deflate", b"\x00\x01 not deflate"),
    ("br", b"\xff\xfe not brotli"), ("gzip", b"\x1f\x8b\x08\x00 broken header")])
def test_a_body_that_does_not_decode_is_400(gateway: LiveGateway, encoding: str,
                                             body: bytes) -> None:
    refused(gateway, 400, "POST", "/v1/rank", body, {**JSON, "Content-Encoding": encoding},
            field="Content-Encoding")
    answer = gateway.request("POST", "/v1/rank", gzip.compress(VALID),
                             {**JSON, "Content-Encoding": "gzip"})
    assert answer.status == 200
