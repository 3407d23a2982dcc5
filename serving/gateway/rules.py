"""The HTTP rules every route shares, each defined once.

* the body: read with its size checked first, parsed as a JSON object;
* the request id: printable ASCII, echoed in ``X-Request-Id``;
* the budget and deadline: a budget in the body (``budget_ms`` on ``/v1``,
  ``parameters.timeout`` on ``/v2``) wins over the ``X-Request-Budget-Ms`` header, which
  wins over the server default; the deadline is the arrival time plus the budget;
* bearer tokens: the whole ``Authorization`` header compared in constant time;
* version numbers in paths and bodies, and numbers in headers: ASCII digits only (Python's
  ``int`` and ``float`` also read other scripts' digits, ``"1_000"`` and spaces), of a
  bounded length (``int`` refuses more than 4,300 digits with an exception of its own).
"""

from __future__ import annotations

import asyncio
import math
import re
from hmac import compare_digest
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError

from serving.errors import BadRequest, NotFound, PayloadTooLarge, RankServeError, Unauthorized
from serving.gateway.keys import ARRIVAL, SETTINGS
from serving.repository.versions import MAX_VERSION, parse_version

BUDGET_HEADER = "X-Request-Budget-Ms"
MAX_REQUEST_ID = 128
REQUEST_ID_PATTERN = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID}}}")
"""Printable ASCII: the id is echoed in the ``X-Request-Id`` response header, where a
control character would make the response unwritable and other text would be mangled."""
COUNT_PATTERN = re.compile(r"[0-9]{1,18}")
"""A count in a header (a byte length): ASCII digits, at most 18 (below 2**63)."""
DECIMAL_PATTERN = re.compile(r"[0-9]{1,18}(\.[0-9]{1,18})?|\.[0-9]{1,18}")
"""A number of milliseconds in a header: plain ASCII decimal, no sign, exponent or ``_``."""


async def read_body(request: web.Request) -> bytes:
    """The request body, refused with 413 before reading when it is over the limit.

    Raises:
        PayloadTooLarge: ``Content-Length`` (or the bytes actually sent) exceed the limit.
        BadRequest: the body does not decode as its ``Content-Encoding`` (gzip, deflate,
            br), its framing is broken, or it took longer than ``body_timeout_s``.
    """
    settings = request.app[SETTINGS]
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes; the limit is {limit}",
                              field="body")
    try:
        if request.content.is_eof():  # all of it has arrived: reading cannot stall, and
            return await request.read()  # skipping wait_for saves a task per request
        return await asyncio.wait_for(request.read(), settings.body_timeout_s)
    except asyncio.TimeoutError:  # a slow body, or a chunked one that never ends
        raise BadRequest(f"the body did not arrive within {settings.body_timeout_s:g} s",
                         field="body") from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body over the limit of {limit} bytes", field="body") from None
    except (web.RequestPayloadError, HttpProcessingError) as e:
        if isinstance(e, ContentEncodingError) or isinstance(e.__cause__, ContentEncodingError):
            raise BadRequest(f"the body does not decode as its Content-Encoding "
                             f"{request.headers.get('Content-Encoding', '')[:32]!r}",
                             field="Content-Encoding") from None
        raise BadRequest("the body is not well framed", field="body") from None  # chunking


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


def parse_count(text: str) -> int | None:
    """A non-negative count from a header, ASCII digits only; None if it is not one."""
    return int(text) if COUNT_PATTERN.fullmatch(text) else None


def valid_request_id(value: object) -> bool:
    return isinstance(value, str) and REQUEST_ID_PATTERN.fullmatch(value) is not None


def parse_budget(value: Any, field: str, max_budget_ms: float) -> float | None:
    """A budget in ms from a body field or the ``X-Request-Budget-Ms`` header (a string).

    Raises:
        BadRequest: not a positive finite number up to ``max_budget_ms``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        # float() reads other scripts' digits ("٣" is 3.0), "1_0", spaces and "nan"
        if DECIMAL_PATTERN.fullmatch(value) is None:
            raise BadRequest(f"'{field}' must be a number of milliseconds", field=field)
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= max_budget_ms:
        raise BadRequest(f"'{field}' must be a number of milliseconds in (0, {max_budget_ms}]",
                         field=field)
    return float(value)


def deadline(request: web.Request, body_budget_ms: float | None) -> float:
    """The request's deadline (``loop.time()`` based): arrival + the first budget given of
    the body's (already validated), the header's and the server default.

    Raises:
        BadRequest: the header's budget is malformed (checked even when the body has one).
    """
    settings = request.app[SETTINGS]
    header = parse_budget(request.headers.get(BUDGET_HEADER), BUDGET_HEADER,
                          settings.max_budget_ms)
    budget_ms = body_budget_ms or header or settings.default_budget_ms
    return request[ARRIVAL] + budget_ms / 1e3


def check_bearer(request: web.Request, token: str, wrong: type[RankServeError]) -> None:
    """Require ``Authorization: Bearer <token>``, compared in constant time over the whole
    header (no timing side channel on how many leading bytes of a guess were right).

    Raises:
        Unauthorized: the header is absent (``wrong`` itself when that is Unauthorized).
        ``wrong``: the header does not carry ``token``.
    """
    check_bearer_value(request.headers.get("Authorization", ""), token, wrong)


def check_bearer_value(presented: str, token: str, wrong: type[RankServeError]) -> None:
    """:func:`check_bearer` on an ``Authorization`` value from any transport (HTTP
    headers, gRPC ``authorization`` metadata): one comparison for both.

    Raises:
        Unauthorized: ``presented`` is empty (``wrong`` itself when that is Unauthorized).
        ``wrong``: ``presented`` does not carry ``token``.
    """
    if compare_digest(_utf8(presented), _utf8(f"Bearer {token}")):
        return
    if not presented or wrong is Unauthorized:
        raise Unauthorized("a valid bearer token is required", field="Authorization")
    raise wrong("the bearer token is not valid for this endpoint", field="Authorization")


def _utf8(text: str) -> bytes:
    """Bytes for ``compare_digest`` (which refuses non-ASCII str); never raises: a header
    that is not UTF-8 arrives with surrogates, which strict encoding would refuse."""
    return text.encode("utf-8", "surrogatepass")


def version_of(value: object, field: str) -> int:
    """A version number from a path segment or a JSON value.

    Raises:
        BadRequest: not a positive integer written in ASCII digits.
    """
    version = parse_version(value) if isinstance(value, str) else value
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 1 <= version <= MAX_VERSION:
        raise BadRequest(f"'{field}' must be a positive integer (int64)", field=field)
    return version


def path_version(request: web.Request) -> int | None:
    """The ``{version}`` segment of a ``/v2/models/{model}/versions/{version}`` path, or
    None on the path without one.

    Raises:
        NotFound: the segment is not a version number (no model version has that name).
    """
    return version_in_path(request.match_info.get("version"))


def version_in_path(text: str | None) -> int | None:
    """A version named where a model is addressed (a path segment, gRPC's
    ``model_version``), or None when empty: the default version.

    Raises:
        NotFound: not a version number (no model version has that name).
    """
    if not text:
        return None
    version = parse_version(text)
    if version is None:
        raise NotFound("the version in the path is not a number", field="version")
    return version
