"""POST /predict: six camera images and their calibration in, one occupancy grid out (API.md)."""

import asyncio
import json
import time
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from occupancy.cameras import CAMERA_NAMES
from occupancy.encoding import (
    DENSE_ENCODING,
    NPY_MEDIA_TYPE,
    SPARSE_ENCODING,
    encode_npy,
    encode_occupancy_json,
)
from occupancy.errors import InputError
from service.api.deps import StateDep
from service.api.schemas import Detail, ModelRef, PredictResponse, Timing, grid_info
from service.backends.base import BackendUnavailable
from service.core.admission import Overloaded
from service.core.state import AppState
from service.pipeline import check_headers, prepare_inputs
from service.request_body import CALIBRATION_PART, read_frame

router = APIRouter(tags=["predict"])

Encoding = Literal["dense", "sparse"]
_ENCODINGS = {"dense": DENSE_ENCODING, "sparse": SPARSE_ENCODING}

# The request body is read by hand (bounded, both forms), so the OpenAPI form is declared here.
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [*CAMERA_NAMES, CALIBRATION_PART],
                "properties": {
                    **{name: {"type": "string", "format": "binary", "description": f"{name}: JPEG or PNG"}
                       for name in CAMERA_NAMES},
                    CALIBRATION_PART: {"$ref": "#/components/schemas/FrameCalibration"},
                },
            },
            "encoding": {CALIBRATION_PART: {"contentType": "application/json"}},
        },
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictJSONBody"}},
    },
}
_ERRORS = {
    code: {"model": Detail, "description": description}
    for code, description in {
        400: "malformed multipart or JSON, undecodable image",
        401: "missing or wrong API key, where keys are configured",
        404: "unknown model",
        413: "body over the limit, or an image with more pixels than allowed (read from its header)",
        415: "unsupported content type or image type",
        422: "schema violation: cameras missing or duplicated, bad calibration, temporal fields missing",
        503: "overloaded (wait queue full) or the backend unavailable; see Retry-After",
        504: "the backend did not answer within the request timeout",
    }.items()
}


@router.post(
    "/predict",
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={200: {"model": PredictResponse, "content": {NPY_MEDIA_TYPE: {}}}, **_ERRORS},
    response_class=Response,
)
async def predict(
    request: Request,
    state: StateDep,
    model: Annotated[str | None, Query(description="served model; default: the configured one")] = None,
    encoding: Annotated[Encoding, Query(description="occupancy encoding of the JSON answer")] = "dense",
    accept: Annotated[str | None, Header(description=f"{NPY_MEDIA_TYPE} for a .npy body")] = None,
) -> Response:
    """One frame in, one occupancy grid out."""
    started = time.perf_counter()
    npy = _accepts_npy(accept)
    # Only served names become label values: a client must not be able to mint new series.
    name = model or state.default_model
    label = {"model": name if name in state.backend.models else "unknown",
             "encoding": "npy" if npy else encoding}
    code = status.HTTP_500_INTERNAL_SERVER_ERROR
    try:
        response = await _predict(request, state, model, _ENCODINGS[encoding], npy, started)
        code = response.status_code
        return response
    except HTTPException as error:
        code = error.status_code
        raise
    finally:
        state.metrics.count_request(status=code, **label)


async def _predict(
    request: Request, state: AppState, model_name: str | None, encoding: str, npy: bool, started: float
) -> Response:
    served = state.model(model_name)
    settings = state.settings
    frame = await read_frame(request, settings.max_body_bytes)
    if served.temporal:
        try:
            frame.calibration.require_temporal()
        except InputError as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from error
    headers = check_headers(frame, settings.max_pixels)
    try:
        async with asyncio.timeout(settings.request_timeout_s), state.admission.slot():
            inputs, timings = await run_in_threadpool(prepare_inputs, frame, headers, served.input_size,
                                                      settings.resampling)
            inference_started = time.perf_counter()
            answer = await state.backend.infer(served.name, inputs)
            grid, served = answer.semantics[0], answer.model  # the version that answered
            timings["inference"] = 1000 * (time.perf_counter() - inference_started)
            encode_started = time.perf_counter()
            encoder = encode_npy if npy else partial(_occupancy_json, encoding=encoding)
            body = await run_in_threadpool(encoder, grid)
            timings["encode"] = 1000 * (time.perf_counter() - encode_started)
    except Overloaded as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "server: overloaded, the wait queue is full",
                            headers={"Retry-After": str(settings.retry_after_s)}) from error
    except BackendUnavailable as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"backend: unavailable ({error})",
                            headers={"Retry-After": str(settings.retry_after_s)}) from error
    except TimeoutError as error:
        message = f"backend: no answer within the request timeout of {settings.request_timeout_s} s"
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, message) from error
    timings["total"] = 1000 * (time.perf_counter() - started)
    state.metrics.observe_timings(timings)
    state.metrics.count_frame(served.name)
    server_timing = ", ".join(f"{stage};dur={ms:.2f}" for stage, ms in timings.items())
    if npy:
        return Response(body, media_type=NPY_MEDIA_TYPE, headers={
            "X-Model-Name": served.name, "X-Model-Version": served.version, "Server-Timing": server_timing})
    head = PredictResponse.model_construct(
        model=ModelRef(name=served.name, version=served.version),
        grid=grid_info(served),
        classes=list(served.classes),
        free_class=served.free_class,
        timing_ms=Timing(**timings),
    ).model_dump(mode="json", exclude={"occupancy"})
    return Response(_splice(head, "occupancy", body), media_type="application/json",
                    headers={"Server-Timing": server_timing})


def _occupancy_json(grid: np.ndarray, encoding: str) -> bytes:
    """The `occupancy` object serialised: the encode stage times all of it (a sparse list is mostly JSON)."""
    return encode_occupancy_json(grid, encoding)


def _splice(head: dict[str, Any], key: str, raw_json: bytes) -> bytes:
    """`head` serialised with one more member whose value is already JSON, so it is not serialised twice."""
    return json.dumps(head, separators=(",", ":")).encode()[:-1] + f',"{key}":'.encode() + raw_json + b"}"


def _accepts_npy(accept: str | None) -> bool:
    """Whether the Accept header lists .npy (with a q above 0)."""
    for item in (accept or "").split(","):
        media_type, *params = (part.strip().lower() for part in item.split(";"))
        q = next((value for key, _, value in (p.partition("=") for p in params) if key == "q"), "1")
        if media_type == NPY_MEDIA_TYPE and _float_or_zero(q) > 0:
            return True
    return False


def _float_or_zero(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
