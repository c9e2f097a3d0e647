"""The one place where a kind of failure becomes an HTTP status (and a Retry-After): API.md's error table."""

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from occupancy.errors import InputError
from service.core.errors import ErrorKind, GatewayError

log = logging.getLogger("service.api")

# nginx's "client closed request": no client reads it, but occ_requests_total counts it apart.
CLIENT_CLOSED_REQUEST = 499
STATUS: dict[ErrorKind, int] = {
    ErrorKind.MALFORMED: status.HTTP_400_BAD_REQUEST,
    ErrorKind.NOT_FOUND: status.HTTP_404_NOT_FOUND,
    ErrorKind.UPLOAD_TIMEOUT: status.HTTP_408_REQUEST_TIMEOUT,
    ErrorKind.TOO_LARGE: status.HTTP_413_CONTENT_TOO_LARGE,
    ErrorKind.UNSUPPORTED: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    ErrorKind.INVALID: status.HTTP_422_UNPROCESSABLE_CONTENT,
    ErrorKind.CLIENT_GONE: CLIENT_CLOSED_REQUEST,
    ErrorKind.OVERLOADED: status.HTTP_503_SERVICE_UNAVAILABLE,
    ErrorKind.UNAVAILABLE: status.HTTP_503_SERVICE_UNAVAILABLE,
    ErrorKind.TIMEOUT: status.HTTP_504_GATEWAY_TIMEOUT,
}
RETRY_LATER = frozenset({ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE})


def add_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Answer GatewayErrors by their kind, InputErrors that reach the edge as INVALID, anything else 500."""

    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        if error.reason is not None:
            log.warning("%s %s: %s", request.method, request.url.path, error)
        headers = {"Retry-After": str(retry_after_s)} if error.kind in RETRY_LATER else None
        return JSONResponse({"detail": error.detail}, STATUS[error.kind], headers=headers)

    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return await gateway_error(request, GatewayError(ErrorKind.INVALID, str(error)))

    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status.HTTP_500_INTERNAL_SERVER_ERROR)

    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(Exception, internal_error)
