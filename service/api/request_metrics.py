"""occ_requests_total for every answer to POST /predict, whoever gives it: the route, the API-key check
(401), FastAPI's own request validation (422) or an unhandled error (500)."""

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.routes.predict import PREDICT_PATH, request_labels


class PredictMetrics:
    """ASGI middleware: counts each /predict request by the status its answer started with."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        status = 500  # if no answer starts, the server error handler's

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            state = scope["app"].state.occ
            state.metrics.count_request(status=status, **request_labels(Request(scope), state))
