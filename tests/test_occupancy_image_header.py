"""JPEG / PNG size from the header, without decoding."""

import cv2
import numpy as np
import pytest

from occupancy.image_header import image_kind, image_size


@pytest.mark.parametrize("extension, kind", [(".jpg", "jpeg"), (".png", "png")])
def test_size_comes_from_the_header(extension, kind):
    image = np.zeros((37, 91, 3), np.uint8)
    data = cv2.imencode(extension, image)[1].tobytes()
    assert image_kind(data) == kind
    assert image_size(data) == (37, 91)
    assert image_size(data[:20]) is None  # truncated before the size


def test_other_bytes_have_no_kind_and_no_size():
    assert image_kind(b"GIF89a....") is None
    assert image_size(b"GIF89a....") is None
    assert image_size(b"") is None


def test_jpeg_size_is_the_one_libjpeg_decodes():
    """Stuffed FF 00 bytes, fill bytes and stray data between segments are skipped as libjpeg's marker
    reader skips them: a decoy frame behind a stuffed pair is never taken for the image's size."""
    from service_fixtures import camera_image, encode, jpeg_with_a_fake_frame

    jpeg = encode(camera_image((300, 400), 1))
    crafted = jpeg_with_a_fake_frame(jpeg)
    assert cv2.imdecode(np.frombuffer(crafted, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (300, 400)
    assert image_size(crafted) == (300, 400)
    # Fill bytes before a marker, and stray bytes between segments (after the first one, APP0).
    filled = jpeg[:2] + b"\xff\xff\xff" + jpeg[2:]
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    stray = jpeg[:after_app0] + b"\x00\x12\xff\x00\x34" + jpeg[after_app0:]
    assert cv2.imdecode(np.frombuffer(stray, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (300, 400)
    for data in (filled, stray, memoryview(crafted)):
        assert image_size(data) == (300, 400)
    assert image_size(jpeg[:2] + b"\xff\xd9" + jpeg[2:]) is None  # the end of the image before any frame
