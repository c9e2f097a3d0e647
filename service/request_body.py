"""Reading a predict request: a bounded body, then the multipart or JSON form of API.md into a `Frame`.

Status codes: 413 body over the limit (Content-Length or counted bytes), 415 content type, 400
malformed multipart/JSON or base64, 422 schema violations (cameras missing, duplicated or
unknown, calibration fields), each naming the part or field.
"""

import base64
import binascii
import json
from collections import Counter
from typing import Any

from fastapi import HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from occupancy.calibration import FrameCalibration, parse_calibration, validation_message
from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from service.pipeline import Frame

CALIBRATION_PART = "calibration"
MULTIPART = "multipart/form-data"
JSON = "application/json"


class PredictJSONBody(BaseModel):
    """The application/json form of a predict request."""

    model_config = ConfigDict(extra="forbid")

    images: dict[str, str] = Field(description="one base64 JPEG or PNG per camera, keyed by camera name")
    calibration: FrameCalibration


async def read_frame(request: Request, max_body_bytes: int) -> Frame:
    """The frame of a predict request, in either form."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (MULTIPART, JSON):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"content-type: {media_type or 'none'} is not supported; send {MULTIPART} "
                            f"or {JSON}")
    body = await read_body(request, max_body_bytes)
    # Parsing tens of megabytes (multipart, JSON, base64) is CPU work: off the event loop.
    if media_type == MULTIPART:
        return await run_in_threadpool(_frame_from_multipart, body, request.headers["content-type"])
    return await run_in_threadpool(_frame_from_json, body)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as its Content-Length or its streamed bytes exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"content-length: not a number: {declared!r}")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # a chunked body, or one longer than it declared
            raise _too_large(len(body), limit)
    return bytes(body)


def _too_large(size: int, limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"body: {size} bytes or more, over the limit of {limit} bytes")


class _PartCollector:
    """python-multipart callbacks that collect (name, bytes) of every part, in order."""

    def __init__(self) -> None:
        self.parts: list[tuple[str | None, bytes]] = []
        self.finished = False
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._data = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._append("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self._data.extend(data[start:end]),
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _append(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + data)

    def _begin(self) -> None:
        self._headers, self._data = {}, bytearray()

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self.parts.append((None if name is None else name.decode("utf-8", "replace"), bytes(self._data)))

    def _end(self) -> None:
        self.finished = True


def _parse_multipart(body: bytes, content_type: str) -> list[tuple[str | None, bytes]]:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "content-type: multipart without a boundary")
    collector = _PartCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"body: malformed multipart ({error})") from error
    if not collector.finished:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "body: malformed multipart (no closing boundary)")
    return collector.parts


def _frame_from_multipart(body: bytes, content_type: str) -> Frame:
    parts = _parse_multipart(body, content_type)
    if any(name is None for name, _ in parts):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "body: a multipart part has no name")
    _check_names([name for name, _ in parts], (*CAMERA_NAMES, CALIBRATION_PART), "part")
    values = dict(parts)
    try:
        calibration = parse_calibration(values[CALIBRATION_PART], field=CALIBRATION_PART)
    except InputError as error:
        malformed = isinstance(error.__cause__, json.JSONDecodeError | UnicodeDecodeError)
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST if malformed else status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)
        ) from error
    return Frame({name: values[name] for name in CAMERA_NAMES}, calibration)


def _frame_from_json(body: bytes) -> Frame:
    try:
        document = json.loads(body, object_pairs_hook=_reject_duplicate_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"body: not valid JSON ({error})") from error
    try:
        request = PredictJSONBody.model_validate(document)
    except ValidationError as error:
        message = validation_message(error, "body")
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message) from error
    _check_names(list(request.images), CAMERA_NAMES, "images key")
    return Frame({name: _b64decode(request.images[name], f"images.{name}") for name in CAMERA_NAMES},
                 request.calibration)


def _check_names(names: list[str], expected: tuple[str, ...], what: str) -> None:
    """422 unless every expected name occurs exactly once and nothing else does."""
    counts = Counter(names)
    problems = [f"missing {what} {name}" for name in expected if name not in counts]
    problems += [f"duplicate {what} {name} ({n} times)" for name, n in counts.items() if n > 1]
    problems += [f"unexpected {what} {name!r}" for name in counts if name not in expected]
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"{'; '.join(problems)} (expected {', '.join(expected)})")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys: a camera given twice must be an error instead.
    duplicates = sorted(key for key, n in Counter(key for key, _ in pairs).items() if n > 1)
    if duplicates:
        message = f"body: duplicate key(s) {', '.join(duplicates)}"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)
    return dict(pairs)


def _b64decode(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{field}: not valid base64 ({error})") from error
