"""Reading a predict request: a bounded body, then the multipart or JSON form of API.md into a `Frame`.

Bounds, each raising its kind of GatewayError (service/api/errors.py has the status codes): the body's
size (Content-Length or counted bytes) and the time to receive it, the number of multipart parts, the
JSON nesting depth and integer length (occupancy.json_input), and the length of every error message.

Memory: the body is read once into one buffer, and multipart parts are views of it, not copies; a JSON
body's bytes are released as soon as its text is decoded, and its base64 strings one by one as they are
decoded. Before admission a request thus holds about one body (a JSON one twice, briefly).
"""

import asyncio
import base64
import binascii
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from occupancy.calibration import FrameCalibration, parse_calibration, validation_message
from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError, MalformedInput
from occupancy.json_input import load_json
from service.core.errors import ErrorKind, GatewayError

CALIBRATION_PART = "calibration"
MULTIPART = "multipart/form-data"
JSON = "application/json"
# Six images and the calibration, with room for the duplicates and strays a 422 should name.
MAX_PARTS = 16
_LISTED = 5  # names an error message lists, at most

# An encoded image: a view into the request body, or decoded base64.
ImageData = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Frame:
    """One request's frame: the encoded image of every camera (CAMERA_NAMES keys) and its calibration."""

    images: Mapping[str, ImageData]
    calibration: FrameCalibration


class PredictJSONBody(BaseModel):
    """The application/json form of a predict request."""

    model_config = ConfigDict(extra="forbid")

    images: dict[str, str] = Field(description="one base64 JPEG or PNG per camera, keyed by camera name")
    calibration: FrameCalibration


async def read_frame(request: Request, max_body_bytes: int, body_timeout_s: float) -> Frame:
    """The frame of a predict request, in either form."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (MULTIPART, JSON):
        raise GatewayError(ErrorKind.UNSUPPORTED, f"content-type: {media_type[:64] or 'none'} is not "
                                                  f"supported; send {MULTIPART} or {JSON}")
    try:
        async with asyncio.timeout(body_timeout_s):
            body = await read_body(request, max_body_bytes)
    except TimeoutError as error:
        raise GatewayError(ErrorKind.UPLOAD_TIMEOUT,
                           f"body: not received within the upload timeout of {body_timeout_s} s") from error
    except ClientDisconnect as error:
        raise GatewayError(ErrorKind.CLIENT_GONE, "client: disconnected during the upload") from error
    # Parsing tens of megabytes (multipart, JSON, base64) is CPU work: off the event loop.
    if media_type == MULTIPART:
        return await run_in_threadpool(_frame_from_multipart, body, request.headers["content-type"])
    return await run_in_threadpool(_frame_from_json, body)


async def read_body(request: Request, limit: int) -> bytearray:
    """The whole body in one buffer, refused (TOO_LARGE) as soon as its Content-Length or its streamed
    bytes exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise GatewayError(ErrorKind.MALFORMED, f"content-length: not a number: {declared[:32]!r}")
        if int(declared) > limit:
            raise _too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # a chunked body, or one longer than it declared
            raise _too_large(len(body), limit)
    return body


def _too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(ErrorKind.TOO_LARGE, f"body: {size} bytes or more, over the limit of {limit} bytes")


class _TooManyParts(Exception):
    pass


class _PartCollector:
    """python-multipart callbacks that collect (name, data) of every part, in order, at most MAX_PARTS.

    The whole body goes to the parser in one write, so a part's data arrives as ranges of the body:
    it is kept as a view. Data from the parser's own look-behind buffer (a boundary split over two
    writes, which one write never has) would be copied instead.
    """

    def __init__(self, body: bytearray) -> None:
        self.parts: list[tuple[str | None, ImageData]] = []
        self.finished = False
        self._body, self._view = body, memoryview(body)
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._range: tuple[int, int] | None = None
        self._copy: bytearray | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._append("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _append(self, attribute: str, data: bytes) -> None:
        setattr(self, attribute, getattr(self, attribute) + bytes(data))

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise _TooManyParts
        self._headers, self._range, self._copy = {}, None, None

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _data(self, data: bytes | bytearray, start: int, end: int) -> None:
        contiguous = self._range is None or self._range[1] == start
        if self._copy is None and data is self._body and contiguous:
            self._range = (start if self._range is None else self._range[0], end)
            return
        if self._copy is None:
            self._copy = bytearray(self._view[slice(*self._range)] if self._range else b"")
        self._copy += data[start:end]

    def _part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if self._copy is not None:
            data: ImageData = self._copy
        else:
            data = self._view[slice(*self._range)] if self._range else b""
        self.parts.append((None if name is None else name.decode("utf-8", "replace"), data))

    def _end(self) -> None:
        self.finished = True


def _parse_multipart(body: bytearray, content_type: str) -> list[tuple[str | None, ImageData]]:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise GatewayError(ErrorKind.MALFORMED, "content-type: multipart without a boundary")
    collector = _PartCollector(body)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except _TooManyParts:
        raise GatewayError(ErrorKind.TOO_LARGE, f"body: more than {MAX_PARTS} multipart parts") from None
    except (MultipartParseError, ValueError) as error:
        raise GatewayError(ErrorKind.MALFORMED, f"body: malformed multipart ({error})") from error
    if not collector.finished:
        raise GatewayError(ErrorKind.MALFORMED, "body: malformed multipart (no closing boundary)")
    return collector.parts


def _frame_from_multipart(body: bytearray, content_type: str) -> Frame:
    parts = _parse_multipart(body, content_type)
    if any(name is None for name, _ in parts):
        raise GatewayError(ErrorKind.MALFORMED, "body: a multipart part has no name")
    _check_names([name for name, _ in parts], (*CAMERA_NAMES, CALIBRATION_PART), "part")
    values = dict(parts)
    try:
        calibration = parse_calibration(values[CALIBRATION_PART], field=CALIBRATION_PART)
    except InputError as error:
        raise _input_error(error) from error
    return Frame({name: values[name] for name in CAMERA_NAMES}, calibration)


def _frame_from_json(body: bytearray) -> Frame:
    try:
        text = str(body, "utf-8")
        body.clear()  # the text is a copy: hold one, not two
        document = load_json(text, "body")
    except UnicodeDecodeError as error:
        raise GatewayError(ErrorKind.MALFORMED, f"body: not valid JSON (not UTF-8: {error})") from error
    except InputError as error:
        raise _input_error(error) from error
    del text
    try:
        request = PredictJSONBody.model_validate(document)
    except ValidationError as error:
        raise GatewayError(ErrorKind.INVALID, validation_message(error, "body")) from error
    _check_names(list(request.images), CAMERA_NAMES, "images key")
    # document's strings are request's too (pydantic keeps str objects): once both let go, every base64
    # string is released as soon as it is decoded.
    images, calibration = document["images"], request.calibration
    del document, request
    return Frame({name: _b64decode(images.pop(name), f"images.{name}") for name in CAMERA_NAMES}, calibration)


def _input_error(error: InputError) -> GatewayError:
    """The kind of an occupancy error: text that does not parse, or a value that breaks the schema."""
    return GatewayError(ErrorKind.MALFORMED if isinstance(error, MalformedInput) else ErrorKind.INVALID,
                        str(error))


def _check_names(names: list[str], expected: tuple[str, ...], what: str) -> None:
    """INVALID unless every expected name occurs exactly once and nothing else does."""
    counts = Counter(names)
    problems = [f"missing {what} {name}" for name in expected if name not in counts]
    problems += [f"duplicate {what} {name[:64]} ({n} times)" for name, n in counts.items() if n > 1]
    unexpected = [name for name in counts if name not in expected]
    problems += [f"unexpected {what} {name[:64]!r}" for name in unexpected[:_LISTED]]
    if len(unexpected) > _LISTED:
        problems.append(f"and {len(unexpected) - _LISTED} more unexpected")
    if problems:
        raise GatewayError(ErrorKind.INVALID, f"{'; '.join(problems)} (expected {', '.join(expected)})")


def _b64decode(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise GatewayError(ErrorKind.MALFORMED, f"{field}: not valid base64 ({error})") from error
