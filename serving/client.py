"""A small client for ``/v1/rank``: async (aiohttp) and sync (standard library), any encoding.

A feed backend imports this::

    async with RankClient("http://127.0.0.1:8000", encoding="binary") as client:
        ranked = await client.rank({"user": {...}, "context": {...}, "history": [...],
                                    "candidates": [{"video_id": 1, ...}, ...]}, top_k=50)
        ranked.video_id, ranked.score

Encodings: ``json`` (the document as given, row-wise or columnar), ``columnar`` (row-wise
candidates turned into columns before sending) and ``binary``
(``application/x-rankserve-columns``). Answers come back in the binary column encoding
when ``binary_response`` is on (the default with ``encoding="binary"``), else as JSON;
:func:`decode_response` reads either. Load generators and benchmarks should encode once
with :func:`encode_request` and send the bytes with :meth:`RankClient.rank_encoded`, so
the client's own encoding cost stays out of the measurement. Errors raise
:class:`RankServeClientError` carrying the server's code, field and request id.
"""

from __future__ import annotations

import http.client
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp
import numpy as np
import orjson

from serving.wire import columns as columns_codec

Encoding = Literal["json", "columnar", "binary"]
JSON = "application/json"
ACCEPT_COLUMNS = f"{columns_codec.CONTENT_TYPE}, {JSON};q=0.5"
"""Binary columns preferred; a server that does not speak them answers JSON."""
PROBS_PREFIX = "probs."


@dataclass
class RankResponse:
    """A ``/v1/rank`` answer; arrays are in ranked order."""

    request_id: str
    model: str
    version: int
    degraded: bool
    video_id: np.ndarray
    score: np.ndarray
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class RankServeClientError(Exception):
    """A non-200 answer from the gateway."""

    def __init__(self, status: int, body: bytes, retry_after: str | None = None) -> None:
        try:
            doc = orjson.loads(body)
            error = doc.get("error", {})
            self.code = str(error.get("code", "unknown"))
            self.message = str(error.get("message", ""))
            self.field: str | None = error.get("field")
            self.request_id: str | None = doc.get("request_id")
        except (orjson.JSONDecodeError, AttributeError):
            self.code, self.message, self.field, self.request_id = (
                "unknown", body[:200].decode(errors="replace"), None, None)
        self.status = status
        self.retry_after_s = float(retry_after) if retry_after else None
        super().__init__(f"{status} {self.code}: {self.message}"
                         + (f" (field {self.field})" if self.field else ""))


def rows_to_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Row-wise candidates -> columns; a key absent from a row becomes ``None``."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return {name: [row.get(name) for row in rows] for name in names}


def encode_request(document: Mapping[str, Any], encoding: Encoding = "json"
                   ) -> tuple[bytes, str]:
    """The body bytes and content type for a ``/v1/rank`` document in ``encoding``."""
    candidates = document.get("candidates")
    if encoding == "json":
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), JSON
    columns = (rows_to_columns(candidates) if isinstance(candidates, list)
               else dict(candidates or {}))
    if encoding == "columnar":
        return orjson.dumps({**document, "candidates": columns},
                            option=orjson.OPT_SERIALIZE_NUMPY), JSON
    rest = {k: v for k, v in document.items() if k != "candidates"}
    return columns_codec.encode(rest, columns), columns_codec.CONTENT_TYPE


def decode_response(body: bytes, content_type: str = JSON) -> RankResponse:
    """A ``/v1/rank`` answer in either encoding, by its ``Content-Type``.

    Raises:
        orjson.JSONDecodeError, KeyError, TypeError, ValueError: not a ``/v1/rank`` answer.
    """
    if content_type.split(";")[0].strip() == columns_codec.CONTENT_TYPE:
        doc, columns = columns_codec.decode(body)
        probs = {name[len(PROBS_PREFIX):]: column for name, column in columns.items()
                 if name.startswith(PROBS_PREFIX)}
    else:
        doc = columns = orjson.loads(body)
        probs = {t: np.asarray(p, dtype=np.float64) for t, p in doc.get("probs", {}).items()}
    return RankResponse(
        request_id=doc["request_id"], model=doc["model"]["name"],
        version=int(doc["model"]["version"]), degraded=bool(doc["degraded"]),
        video_id=np.asarray(columns["video_id"], dtype=np.int64),
        score=np.asarray(columns["score"], dtype=np.float64),
        probs=probs, timings=doc.get("timings", {}))


def _headers(token: str | None, encoding: Encoding, binary_response: bool | None
             ) -> dict[str, str]:
    """Headers every request of a client carries: the bearer token, and ``Accept`` asking
    for binary answers (by default when the requests are binary too)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if binary_response or (binary_response is None and encoding == "binary"):
        headers["Accept"] = ACCEPT_COLUMNS
    return headers


def _with_options(document: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    return {**document, **{k: v for k, v in options.items() if v is not None}}


class RankClient:
    """Async client over one pooled aiohttp session (``limit`` connections)."""

    def __init__(self, base_url: str, *, encoding: Encoding = "json", token: str | None = None,
                 timeout_s: float = 10.0, limit: int = 100,
                 session: aiohttp.ClientSession | None = None,
                 binary_response: bool | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.encoding = encoding
        self._headers = _headers(token, encoding, binary_response)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limit = limit
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> RankClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit), timeout=self._timeout)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def rank(self, document: Mapping[str, Any], *, top_k: int | None = None,
                   budget_ms: float | None = None, weights: Mapping[str, float] | None = None,
                   return_tasks: bool | list[str] | None = None,
                   encoding: Encoding | None = None) -> RankResponse:
        """Rank one request document (see docs/api.md).

        Raises:
            RankServeClientError: the gateway answered with an error.
            aiohttp.ClientError, TimeoutError: transport failures.
        """
        doc = _with_options(document, {"top_k": top_k, "budget_ms": budget_ms,
                                       "weights": weights, "return_tasks": return_tasks})
        body, content_type = encode_request(doc, encoding or self.encoding)
        return await self.rank_encoded(body, content_type)

    async def rank_encoded(self, body: bytes, content_type: str,
                           headers: Mapping[str, str] | None = None) -> RankResponse:
        """Send a body made by :func:`encode_request` (benchmarks pre-encode once)."""
        async with self._client().post(
                f"{self.base_url}/v1/rank", data=body,
                headers={**self._headers, "Content-Type": content_type, **(headers or {})},
        ) as response:
            payload = await response.read()
            if response.status != 200:
                raise RankServeClientError(response.status, payload,
                                           response.headers.get("Retry-After"))
            return decode_response(payload, response.content_type)

    async def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        async with self._client().get(f"{self.base_url}/readyz") as response:
            return response.status == 200


class SyncRankClient:
    """Blocking client on one keep-alive ``http.client`` connection (not thread-safe)."""

    def __init__(self, base_url: str, *, encoding: Encoding = "json", token: str | None = None,
                 timeout_s: float = 10.0, binary_response: bool | None = None) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self._connect = (parsed.hostname or "127.0.0.1", parsed.port or 80, timeout_s)
        self.encoding = encoding
        self._headers = _headers(token, encoding, binary_response)
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> SyncRankClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, body: bytes | None,
                 headers: Mapping[str, str]) -> tuple[int, bytes, str | None, str]:
        for attempt in (0, 1):  # one retry when a kept-alive connection was closed
            if self._conn is None:
                host, port, timeout = self._connect
                self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                self._conn.request(method, path, body=body, headers={**self._headers, **headers})
                response = self._conn.getresponse()
                return (response.status, response.read(), response.getheader("Retry-After"),
                        response.getheader("Content-Type", JSON))
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def rank(self, document: Mapping[str, Any], *, top_k: int | None = None,
             budget_ms: float | None = None, weights: Mapping[str, float] | None = None,
             return_tasks: bool | list[str] | None = None,
             encoding: Encoding | None = None) -> RankResponse:
        """As :meth:`RankClient.rank`, blocking.

        Raises:
            RankServeClientError: the gateway answered with an error.
            OSError: transport failures.
        """
        doc = _with_options(document, {"top_k": top_k, "budget_ms": budget_ms,
                                       "weights": weights, "return_tasks": return_tasks})
        body, content_type = encode_request(doc, encoding or self.encoding)
        return self.rank_encoded(body, content_type)

    def rank_encoded(self, body: bytes, content_type: str) -> RankResponse:
        status, payload, retry_after, answer_type = self._request(
            "POST", "/v1/rank", body, {"Content-Type": content_type})
        if status != 200:
            raise RankServeClientError(status, payload, retry_after)
        return decode_response(payload, answer_type)

    def ready(self) -> bool:
        return self._request("GET", "/readyz", None, {})[0] == 200
