"""POST /predict: six camera images and their calibration in, one occupancy grid out (API.md)."""

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from occupancy import model_contract as contract
from occupancy.cameras import CAMERA_NAMES
from occupancy.encoding import (
    DENSE_ENCODING,
    NPY_MEDIA_TYPE,
    SPARSE_ENCODING,
    encode_npy,
    encode_occupancy_json,
)
from occupancy.sequence import SEQUENCE_HEADER, SEQUENCE_HEADERS, FrameMotion
from service.api.deps import StateDep
from service.api.schemas import Detail, ModelRef, PredictResponse, Sequence, Timing, grid_info
from service.backends.base import ServedModel
from service.core.errors import ErrorKind, GatewayError
from service.core.sequences import SequenceFrame, SequenceInfo
from service.images import ImageHeader
from service.pipeline import check_headers, prepare_inputs
from service.request_body import CALIBRATION_PART, MAX_PARTS, Frame, read_frame
from service.state import AppState

router = APIRouter(tags=["predict"])
PREDICT_PATH = "/predict"

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
        400: "malformed multipart or JSON (or JSON nested too deeply), undecodable image",
        401: "missing or wrong API key, where keys are configured",
        404: "unknown model",
        408: "the body was not received within the upload timeout",
        413: f"body over the limit, more than {MAX_PARTS} parts, or an image with more pixels than allowed "
             "(read from its header)",
        415: "unsupported content type or image type",
        422: "schema violation: cameras missing or duplicated, bad calibration, temporal fields missing, "
             f"{SEQUENCE_HEADER} other than calibration.sequence_id",
        503: "overloaded (wait queue full, too many uploads) or the backend unavailable; see Retry-After",
        504: "the backend did not answer within the request timeout",
    }.items()
}


@router.post(
    PREDICT_PATH,
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
    sequence_header: Annotated[str | None, Header(
        alias=SEQUENCE_HEADER, description="temporal models: calibration.sequence_id, for routing")] = None,
) -> Response:
    """One frame in, one occupancy grid out."""
    started = time.perf_counter()
    npy = _accepts_npy(accept)
    served = state.model(model)  # this version answers, even if another is swapped in meanwhile
    encoder = encode_npy if npy else partial(encode_occupancy_json, encoding=_ENCODINGS[encoding])
    frame, headers = await _read_checked(request, state, served, sequence_header)
    body, served, timings, sequence = await _compute(request, state, served, frame, headers, encoder)
    timings["total"] = 1000 * (time.perf_counter() - started)
    state.metrics.observe_timings(timings)
    state.metrics.count_frame(served.name)
    server_timing = ", ".join(f"{stage};dur={ms:.2f}" for stage, ms in timings.items())
    if npy:
        return Response(body, media_type=NPY_MEDIA_TYPE, headers={
            "X-Model-Name": served.name, "X-Model-Version": served.version, "Server-Timing": server_timing,
            **_sequence_headers(sequence)})
    head = PredictResponse.model_construct(
        model=ModelRef(name=served.name, version=served.version),
        grid=grid_info(served),
        classes=list(served.classes),
        free_class=served.free_class,
        timing_ms=Timing(**timings),
    ).model_dump(mode="json", exclude={"occupancy", "sequence"})
    if sequence is not None:
        head["sequence"] = Sequence(**dataclasses.asdict(sequence)).model_dump(mode="json")
    return Response(_splice(head, "occupancy", body), media_type="application/json",
                    headers={"Server-Timing": server_timing})


async def _read_checked(
    request: Request, state: AppState, served: ServedModel, sequence_header: str | None
) -> tuple[Frame, dict[str, ImageHeader]]:
    """The request's frame and its images' headers, checked as far as they can be before admission."""
    with state.uploads.hold():
        frame = await read_frame(request, state.settings.max_body_bytes, state.settings.body_timeout_s)
    if served.temporal:
        frame.calibration.require_temporal()  # InputError: 422
        if sequence_header is not None and sequence_header != frame.calibration.sequence_id:
            message = (f"{SEQUENCE_HEADER}: {sequence_header[:64]!r} is not the calibration's sequence_id "
                       f"{frame.calibration.sequence_id!r}")
            raise GatewayError(ErrorKind.INVALID, message)
    return frame, check_headers(frame, state.settings.max_pixels)


async def _compute(
    request: Request, state: AppState, served: ServedModel, frame: Frame, headers: dict[str, ImageHeader],
    encoder: Callable[[np.ndarray], bytes],
) -> tuple[bytes, ServedModel, dict[str, float], SequenceInfo | None]:
    """The encoded grid, the version that answered, the stage times (ms) and, for a temporal model, where
    the frame stands in its sequence; within the sequence's turn (frames of one sequence one at a time),
    one admission slot and the request timeout; a stage starts only while the client is still connected."""
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout_s
    sequence: SequenceFrame | None = None
    try:
        async with _turn(state, served, frame, deadline), state.admission.slot(deadline) as slot:
            await _still_connected(request)
            inputs, timings = await slot.run(partial(
                run_in_threadpool, prepare_inputs, frame, headers, served.input_size, state.decoder,
                state.settings.resampling))
            if served.temporal:
                sequence = _begin(state, served, frame, inputs)
                inputs |= sequence.inputs
            await _still_connected(request)
            inference_started = time.perf_counter()
            answer = await slot.run(partial(state.backend.infer, served, inputs))
            timings["inference"] = 1000 * (time.perf_counter() - inference_started)
            if sequence is not None:
                sequence.keep(answer.state)
            await _still_connected(request)
            encode_started = time.perf_counter()
            body = await slot.run(partial(run_in_threadpool, encoder, answer.semantics[0]))
            timings["encode"] = 1000 * (time.perf_counter() - encode_started)
    except GatewayError:
        raise  # a backend's own timeout (BackendTimeout) is a TimeoutError too, with its own message
    except TimeoutError as error:
        message = f"backend: no answer within the request timeout of {state.settings.request_timeout_s} s"
        raise GatewayError(ErrorKind.TIMEOUT, message) from error
    return body, answer.model, timings, None if sequence is None else sequence.info


def _turn(state: AppState, served: ServedModel, frame: Frame, deadline: float):
    """A temporal model's frame waits for its sequence's turn (before a slot: a slot never waits on a turn);
    other frames go straight on."""
    if not served.temporal:
        return contextlib.nullcontext()
    calibration = frame.calibration
    return state.sequences.turn(served.name, calibration.sequence_id, calibration.timestamp, deadline)


def _begin(state: AppState, served: ServedModel, frame: Frame, inputs: dict[str, np.ndarray],
           ) -> SequenceFrame:
    """The frame's place in its sequence: the past frame it uses, and the inputs that carry it."""
    calibration = frame.calibration
    motion = FrameMotion.of(calibration.timestamp, calibration.mounts_array(),
                            calibration.camera_ego2global_array(), inputs[contract.INTRINSICS][0],
                            inputs[contract.POST_ROTS][0], inputs[contract.POST_TRANS][0])
    return state.sequences.begin(served, calibration.sequence_id, motion)


def _sequence_headers(sequence: SequenceInfo | None) -> dict[str, str]:
    """The `sequence` of a JSON answer as headers of a .npy one."""
    if sequence is None:
        return {}
    values = {"id": sequence.id, "frame_index": sequence.frame_index, "history": sequence.history,
              "reset": sequence.reset}
    return {SEQUENCE_HEADERS[key]: str(value) for key, value in values.items() if value is not None}


def request_labels(request: Request, state: AppState) -> dict[str, str]:
    """`model` and `encoding` labels of a predict request's occ_requests_total series. Only served model
    names and the API's encodings become label values: a client must not be able to mint new series."""
    name = request.query_params.get("model") or state.default_model
    encoding = request.query_params.get("encoding", "dense")
    return {"model": name if name in state.backend.models else "unknown",
            "encoding": "npy" if _accepts_npy(request.headers.get("accept"))
            else encoding if encoding in _ENCODINGS else "invalid"}


async def _still_connected(request: Request) -> None:
    """CLIENT_GONE once the client has disconnected: the stages after it would compute for no one."""
    if await request.is_disconnected():
        raise GatewayError(ErrorKind.CLIENT_GONE, "client: disconnected before the answer")


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
