"""The FastAPI app: `create_app(settings)` builds it; backend, metrics and queue are built in its lifespan.

Run it with `occ serve`, or `uvicorn --factory service.main:create_app_from_env`.
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from threadpoolctl import threadpool_limits

from occupancy.cameras import CAMERA_NAMES
from service.api.deps import require_api_key
from service.api.errors import add_error_handlers
from service.api.request_metrics import PredictMetrics
from service.api.routes import health, models, predict, sequences
from service.backends.base import Backend
from service.backends.embedded import EmbeddedBackend
from service.backends.triton import TritonBackend
from service.core.admission import Admission, UploadLimit
from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.sequences import SequenceLimits, SequenceStore
from service.request_body import PredictJSONBody
from service.state import AppState

log = logging.getLogger("service")

# One thread per camera, as far as there are cores: decoding is CPU work (libjpeg releases the GIL).
DECODE_THREADS = min(len(CAMERA_NAMES), os.cpu_count() or 1)

# numpy's BLAS (OpenBLAS) on one thread while serving. The gateway's matrices are 4 x 4, and after one
# LAPACK call (np.linalg.inv of a camera's ego pose) OpenBLAS's other threads spin on a core for as long
# as calls keep coming: on two cores that took the decoder threads' time, and the six JPEGs of a frame
# with per-camera ego poses decoded in 16.4 ms instead of 8.2 (benchmarks/http_predict_results.md).
BLAS_THREADS = 1

SWEEP_S = 10.0  # how often expired sequences are dropped at the latest (sooner with a shorter TTL)

BackendFactory = Callable[[Settings], Backend]
BACKENDS: dict[str, BackendFactory] = {"embedded": EmbeddedBackend.load, "triton": TritonBackend.load}


def create_app(settings: Settings | None = None, build_backend: BackendFactory | None = None) -> FastAPI:
    """The gateway app; `build_backend` replaces the configured backend (tests inject slow ones)."""
    settings = Settings() if settings is None else settings
    build_backend = BACKENDS[settings.backend] if build_backend is None else build_backend

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            backend = await run_in_threadpool(build_backend, settings)
            decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="occ-decode")
            sweeper = None
            try:
                app.state.occ = state = _state(settings, backend, decoder)
                interval = min(settings.sequence_ttl_s, SWEEP_S)
                sweeper = asyncio.create_task(state.sequences.sweep_forever(interval))
                yield
            finally:
                if sweeper is not None:
                    sweeper.cancel()
                decoder.shutdown(wait=False, cancel_futures=True)
                await backend.close()

    app = FastAPI(
        title="Occupancy gateway",
        summary="Six camera images and their calibration in, a 3D semantic occupancy grid out.",
        version="1",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(predict.router, dependencies=[Depends(require_api_key)])
    app.include_router(models.router, dependencies=[Depends(require_api_key)])
    app.include_router(sequences.router, dependencies=[Depends(require_api_key)])
    app.add_middleware(PredictMetrics)
    add_error_handlers(app, settings.retry_after_s)
    app.openapi = lambda: _openapi(app)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn's factory: settings from the `OCC_*` environment."""
    return create_app(Settings())


def _state(settings: Settings, backend: Backend, decoder: ThreadPoolExecutor) -> AppState:
    metrics = Metrics(backend.kind)
    metrics.follow_models(lambda: backend.models)
    default = settings.default_model or min(backend.models)
    log.info("serving %s with backend %s (default %s)", sorted(backend.models), backend.kind, default)
    admission = Admission(settings.max_concurrent, settings.max_queue, metrics)
    uploads = UploadLimit(settings.max_uploads)
    limits = SequenceLimits(settings.max_sequences, settings.sequence_ttl_s, settings.sequence_rules(),
                            settings.max_queue)
    sequences = SequenceStore(limits, metrics)
    _log_sequence_bound(sequences, backend.models.values(), settings)
    return AppState(settings, backend, metrics, admission, uploads, decoder, default, sequences)


def _log_sequence_bound(sequences: SequenceStore, models, settings: Settings) -> None:
    """What the temporal models' sequences can hold at most, logged at start-up."""
    temporal = [model for model in models if model.temporal]
    if not temporal:
        return
    per_frame = ", ".join(f"{model.name} {model.state_bytes / 2**20:.2f} MiB" for model in temporal)
    in_flight = settings.max_concurrent * 2 * max(model.state_bytes for model in temporal)
    log.info("sequence state: at most %d sequences x %d kept frames x the largest state per frame (%s) = "
             "%.1f MiB, plus %.1f MiB for the frames in flight (OCC_MAX_SEQUENCES, OCC_SEQUENCE_FRAMES)",
             settings.max_sequences, settings.sequence_frames, per_frame,
             sequences.bound_bytes(temporal) / 2**20, in_flight / 2**20)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's description, plus the request schemas that /predict's hand-written requestBody refers to."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        _, definitions = models_json_schema([(PredictJSONBody, "validation")],
                                            ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema
