"""What can go wrong with a request, as kinds. Processing code raises `GatewayError(kind, detail)`;
the app's edge (`service/api/errors.py`) alone decides which HTTP status answers each kind."""

from enum import Enum


class ErrorKind(Enum):
    MALFORMED = "malformed"  # the body or a part does not parse: multipart, JSON, base64, an image
    UPLOAD_TIMEOUT = "upload_timeout"  # the body did not arrive within the upload deadline
    NOT_FOUND = "not_found"  # an unknown model
    TOO_LARGE = "too_large"  # over a size limit: the body, its part count, an image's pixels
    UNSUPPORTED = "unsupported"  # a content type or image type the API does not take
    INVALID = "invalid"  # parses, but breaks the schema: cameras, calibration, temporal fields
    OVERLOADED = "overloaded"  # every slot busy and the wait queue full, or too many uploads at once
    UNAVAILABLE = "unavailable"  # the backend cannot answer now
    TIMEOUT = "timeout"  # no answer within the request timeout
    CLIENT_GONE = "client_gone"  # the client disconnected before its answer: the work was skipped


class GatewayError(Exception):
    """A request that cannot be answered with a grid. `detail` is what the client is told; `reason`, where
    given, is what only the log gets (internal addresses, a backend's own message)."""

    def __init__(self, kind: ErrorKind, detail: str, reason: str | None = None):
        super().__init__(detail if reason is None else f"{detail} ({reason})")
        self.kind, self.detail, self.reason = kind, detail, reason
