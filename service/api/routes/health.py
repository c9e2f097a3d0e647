"""Liveness, readiness and Prometheus metrics: open even where API keys are configured."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import StateDep
from service.api.schemas import Detail
from service.core.errors import ErrorKind, GatewayError

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Detail)
async def healthz() -> Detail:
    """The process is alive."""
    return Detail(detail="alive")


@router.get("/readyz", response_model=Detail, responses={503: {"model": Detail}})
async def readyz(state: StateDep) -> Detail:
    """A model is loaded and the backend answers; 503 otherwise."""
    if state.backend.models and await state.backend.ready():
        return Detail(detail="ready")
    raise GatewayError(ErrorKind.UNAVAILABLE, "backend: no model loaded or the backend does not answer")


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(state: StateDep) -> Response:
    """Prometheus exposition of this app's registry."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
