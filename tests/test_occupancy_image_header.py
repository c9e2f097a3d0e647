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
