"""Python client of the gateway's HTTP API (API.md): POST /predict, GET /v1/models, GET /readyz.

`OccupancyClient` is synchronous, `AsyncOccupancyClient` its asyncio twin; both share the request
building (`build_request`) and the response parsing (`parse_prediction`), so a prepared request can be
sent many times (the load generator does). Answers other than 2xx raise `GatewayError` with the
gateway's `detail` text.
"""

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from occupancy.calibration import FrameCalibration
from occupancy.classes import CLASS_NAMES
from occupancy.encoding import NPY_MEDIA_TYPE, decode_npy, decode_occupancy
from occupancy.errors import InputError
from occupancy.grid import OCC3D_GRID
from occupancy.sequence import SEQUENCE_HEADER, SEQUENCE_HEADERS

Encoding = Literal["dense", "sparse", "npy"]
ENCODINGS: tuple[str, ...] = ("dense", "sparse", "npy")
ImageSource = bytes | str | os.PathLike
DEFAULT_TIMEOUT_S = 60.0
SEQUENCES_PATH = "/v1/sequences"


class GatewayError(Exception):
    """The gateway answered with an error status; `detail` is its explanation (naming the bad field)."""

    def __init__(self, status: int, detail: str, retry_after: str | None = None) -> None:
        super().__init__(f"gateway answered {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after  # the Retry-After header of a 429/503, as sent


@dataclass(frozen=True)
class Prediction:
    """One answer of POST /predict.

    `grid` is uint8 [X, Y, Z] (200 x 200 x 16), ego frame indexed [x, y, z], one class index per voxel.
    `timing_ms` holds the gateway's stages (decode, preprocess, inference, encode, total); `round_trip_ms`
    the client's time from sending the request to having read the whole body (before decoding it).
    """

    grid: np.ndarray
    model: str
    version: str
    timing_ms: dict[str, float]
    round_trip_ms: float
    sequence: dict[str, Any] | None = None  # temporal models: {"id", "frame_index", "history"}
    classes: tuple[str, ...] = CLASS_NAMES
    body_bytes: int = 0  # size of the response body as it travelled

    def histogram(self) -> dict[str, int]:
        """Voxel count per class name, for the classes that occur."""
        counts = np.bincount(self.grid.ravel(), minlength=len(self.classes))
        return {self.classes[index]: int(count) for index, count in enumerate(counts) if count}


@dataclass(frozen=True)
class PredictRequest:
    """A prepared POST /predict: multipart parts, query parameters and headers; reusable."""

    files: list[tuple[str, tuple[str, bytes, str]]]
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    encoding: Encoding = "dense"


def build_request(
    images: Mapping[str, ImageSource],
    calibration: FrameCalibration | Mapping[str, Any],
    model: str | None = None,
    encoding: Encoding = "dense",
) -> PredictRequest:
    """The multipart request of API.md for one frame.

    `images` maps camera names to encoded JPEG/PNG bytes or to image files; `calibration` is a validated
    FrameCalibration or the API's JSON form as a mapping (sent as given: the gateway validates it).
    Raises InputError for an unknown encoding or an unreadable image file.
    """
    if encoding not in ENCODINGS:
        raise InputError(f"encoding: unknown {encoding!r}, expected one of {', '.join(ENCODINGS)}")
    files = [(camera, (f"{camera}{_suffix(source)}", _image_bytes(camera, source), _media_type(source)))
             for camera, source in images.items()]
    if isinstance(calibration, FrameCalibration):
        calibration_json = calibration.model_dump_json(exclude_none=True)
        sequence_id = calibration.sequence_id
    else:
        calibration_json = json.dumps(calibration)
        sequence_id = calibration.get("sequence_id")
    files.append(("calibration", ("calibration.json", calibration_json.encode(), "application/json")))
    params = {} if model is None else {"model": model}
    # A load balancer can route a sequence to one replica by this header, without reading the body.
    headers = {} if not isinstance(sequence_id, str) else {SEQUENCE_HEADER: sequence_id}
    if encoding == "npy":
        headers["Accept"] = NPY_MEDIA_TYPE
    else:
        params["encoding"] = encoding
    return PredictRequest(files, params, headers, encoding)


def parse_prediction(response: httpx.Response, round_trip_ms: float) -> Prediction:
    """The Prediction in a /predict response (JSON or .npy); GatewayError for an error status."""
    raise_for_gateway_error(response)
    if response.headers.get("content-type", "").startswith(NPY_MEDIA_TYPE):
        return Prediction(
            grid=decode_npy(response.content, OCC3D_GRID.shape),
            model=response.headers.get("X-Model-Name", ""),
            version=response.headers.get("X-Model-Version", ""),
            timing_ms=parse_server_timing(response.headers.get("Server-Timing", "")),
            round_trip_ms=round_trip_ms,
            sequence=_sequence_from_headers(response.headers),
            body_bytes=len(response.content),
        )
    try:
        body = response.json()
        shape = tuple(body["grid"]["shape"])
        return Prediction(
            grid=decode_occupancy(body["occupancy"], shape),
            model=body["model"]["name"],
            version=str(body["model"]["version"]),
            timing_ms={stage: float(ms) for stage, ms in body["timing_ms"].items()},
            round_trip_ms=round_trip_ms,
            sequence=body.get("sequence"),
            classes=tuple(body.get("classes", CLASS_NAMES)),
            body_bytes=len(response.content),
        )
    except (ValueError, KeyError, TypeError) as error:  # ValueError: not JSON
        problem = f"{type(error).__name__}: {error}"
        raise InputError(f"response: not a /predict answer of API.md ({problem})") from error


def _sequence_from_headers(headers: httpx.Headers) -> dict[str, Any] | None:
    """The `sequence` of a .npy answer, from its headers (None for single-frame models)."""
    if SEQUENCE_HEADER not in headers:
        return None
    sequence: dict[str, Any] = {key: headers.get(name) for key, name in SEQUENCE_HEADERS.items()}
    return sequence | {key: int(sequence[key]) for key in ("frame_index", "history")}


def parse_server_timing(header: str) -> dict[str, float]:
    """`decode;dur=1.20, total;dur=9.80` -> {"decode": 1.2, "total": 9.8} (milliseconds)."""
    timing = {}
    for metric in filter(None, (part.strip() for part in header.split(","))):
        name, *params = (part.strip() for part in metric.split(";"))
        for key, _, value in (param.partition("=") for param in params):
            if key == "dur":
                timing[name] = float(value)
    return timing


def raise_for_gateway_error(response: httpx.Response) -> None:
    """GatewayError(status, detail) unless the status is 2xx."""
    if response.is_success:
        return
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        detail = response.text.strip() or response.reason_phrase
    if not isinstance(detail, str):
        detail = json.dumps(detail)  # FastAPI's own validation errors are lists of objects
    raise GatewayError(response.status_code, detail, response.headers.get("Retry-After"))


class OccupancyClient:
    """Synchronous client: `with OccupancyClient(url) as client: client.predict(images, calibration)`.

    `http` replaces the httpx.Client the client would build (tests pass FastAPI's TestClient).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 http: httpx.Client | None = None) -> None:
        headers = _auth_headers(api_key)
        if http is None:
            http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
        else:
            http.headers.update(headers)
        self._http = http

    def predict(self, images: Mapping[str, ImageSource], calibration: FrameCalibration | Mapping[str, Any],
                model: str | None = None, encoding: Encoding = "dense") -> Prediction:
        """One frame's occupancy grid (see build_request for the arguments)."""
        return self.send(build_request(images, calibration, model, encoding))

    def send(self, request: PredictRequest) -> Prediction:
        """POST a prepared request."""
        started = time.perf_counter()
        response = self._http.post("/predict", files=request.files, params=request.params,
                                   headers=request.headers)
        return parse_prediction(response, 1000 * (time.perf_counter() - started))

    def models(self) -> dict[str, Any]:
        """GET /v1/models: {"default": name, "models": [{"name", "version", "input_size", ...}]}."""
        response = self._http.get("/v1/models")
        raise_for_gateway_error(response)
        return response.json()

    def end_sequence(self, sequence_id: str) -> bool:
        """DELETE /v1/sequences/{id}: whether the gateway held the sequence."""
        return _ended(self._http.delete(f"{SEQUENCES_PATH}/{sequence_id}"))

    def ready(self) -> bool:
        """Whether GET /readyz answers 200 (a model is loaded and the backend answers)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "OccupancyClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncOccupancyClient:
    """asyncio twin of OccupancyClient (same methods, awaited); `http` replaces its httpx.AsyncClient."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 http: httpx.AsyncClient | None = None, max_connections: int = 100) -> None:
        headers = _auth_headers(api_key)
        if http is None:
            limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
            http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, limits=limits)
        else:
            http.headers.update(headers)
        self._http = http

    async def predict(self, images: Mapping[str, ImageSource],
                      calibration: FrameCalibration | Mapping[str, Any],
                      model: str | None = None, encoding: Encoding = "dense") -> Prediction:
        return await self.send(build_request(images, calibration, model, encoding))

    async def send(self, request: PredictRequest) -> Prediction:
        started = time.perf_counter()
        response = await self._http.post("/predict", files=request.files, params=request.params,
                                         headers=request.headers)
        return parse_prediction(response, 1000 * (time.perf_counter() - started))

    async def models(self) -> dict[str, Any]:
        response = await self._http.get("/v1/models")
        raise_for_gateway_error(response)
        return response.json()

    async def end_sequence(self, sequence_id: str) -> bool:
        return _ended(await self._http.delete(f"{SEQUENCES_PATH}/{sequence_id}"))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncOccupancyClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _ended(response: httpx.Response) -> bool:
    """A DELETE /v1/sequences answer: 204 ended, 404 not held; GatewayError otherwise."""
    if response.status_code == 404:
        return False
    raise_for_gateway_error(response)
    return True


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {} if not api_key else {"Authorization": f"Bearer {api_key}"}


def _image_bytes(camera: str, source: ImageSource) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise InputError(f"images.{camera}: cannot read {source} ({error.strerror})") from error


def _suffix(source: ImageSource) -> str:
    if isinstance(source, bytes):
        return ".png" if source.startswith(b"\x89PNG") else ".jpg"
    return Path(source).suffix or ".jpg"


def _media_type(source: ImageSource) -> str:
    return "image/png" if _suffix(source).lower() == ".png" else "image/jpeg"
