"""The project's one exception hierarchy.

Every error a client can cause carries its HTTP status, a stable machine-readable code and
the field it concerns. The gateway maps these to JSON responses in one middleware, so codec,
encoder, batcher and backend code never raise web-framework exceptions and never leak
internal exception text to clients.
"""

from __future__ import annotations


class RankServeError(Exception):
    """Base class: an error with an HTTP status, a stable code and an optional field."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadRequest(RankServeError):
    """The request is malformed; retrying it unchanged cannot succeed."""

    status = 400
    code = "bad_request"


class InvalidFeature(BadRequest):
    """A feature value has the wrong type, is not finite, or is out of range."""

    code = "invalid_feature"


class MissingFeature(BadRequest):
    """A required feature is absent from the request."""

    code = "missing_feature"


class Unauthorized(RankServeError):
    """The request lacks the bearer token the server requires."""

    status = 401
    code = "unauthorized"


class Forbidden(RankServeError):
    """The credentials were presented but are not the right ones (the admin token)."""

    status = 403
    code = "forbidden"


class Conflict(RankServeError):
    """The request contradicts the server's current state (unloading the last version)."""

    status = 409
    code = "conflict"


class UnsupportedMediaType(BadRequest):
    """The body's content type is not one the endpoint decodes."""

    status = 415
    code = "unsupported_media_type"


class NotFound(RankServeError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RankServeError):
    """The path exists but not for this HTTP method."""

    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(RankServeError):
    status = 413
    code = "payload_too_large"


class Overloaded(RankServeError):
    """The queue is full; the client should retry after ``retry_after_s``."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(RankServeError):
    """The request's budget ran out before its rows could be scored."""

    status = 504
    code = "deadline_exceeded"


class Unavailable(RankServeError):
    """The model or backend is not ready (never reported as a 4xx)."""

    status = 503
    code = "unavailable"


class BackendError(RankServeError):
    """The scoring backend failed on a batch; only that batch's requests see it."""

    status = 502
    code = "backend_error"


class ModelCardError(RankServeError):
    """A model card, config.pbtxt or ONNX file disagree with each other."""

    code = "model_card_mismatch"
