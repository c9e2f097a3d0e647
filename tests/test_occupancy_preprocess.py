"""Image preprocessing: reference numbers, composition, and pixels landing where post_rot/post_tran say."""

import math

import cv2
import numpy as np
import pytest

import occupancy.preprocess as preprocess
from occupancy import network_input
from occupancy.errors import InputError
from occupancy.geometry import ego_to_pixels, pose_matrix
from occupancy.preprocess import ImageTransform, apply_transform, decode_image, decode_scale

SOURCE = (900, 1600)
INTRINSIC = np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]])
SENSOR2EGO = pose_matrix((1.70, 0.02, 1.51), (0.4998, -0.5031, 0.4998, -0.4971))


def reference_post_transform(resize, crop, flip, rotate_degrees):
    """BEVDet's img_transform restated: scale, minus the crop corner, flip, rotate about the centre."""
    post_rot, post_tran = np.eye(2) * resize, -np.array(crop[:2], dtype=np.float64)
    if flip:
        flip_matrix = np.array([[-1.0, 0.0], [0.0, 1.0]])
        post_rot, post_tran = flip_matrix @ post_rot, flip_matrix @ post_tran + [crop[2] - crop[0], 0]
    angle = rotate_degrees / 180 * np.pi
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    centre = np.array([crop[2] - crop[0], crop[3] - crop[1]]) / 2
    return rotation @ post_rot, rotation @ post_tran + (rotation @ -centre + centre)


def blob_image(size, centre, sigma=4.0):
    """uint8 (H, W, 3) black image with a Gaussian dot at `centre` (u, v) in pixel-area coordinates."""
    rows, columns = np.mgrid[0 : size[0], 0 : size[1]] + 0.5
    blob = np.exp(-((columns - centre[0]) ** 2 + (rows - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(255 * blob).astype(np.uint8)[..., None], 3, axis=2)


def blob_centre(image):
    """Intensity-weighted centre (u, v) of a dot, in pixel-area coordinates."""
    weights = image[..., 0].astype(np.float64)
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]] + 0.5
    return np.array([(weights * columns).sum(), (weights * rows).sum()]) / weights.sum()


def smooth_image(size, seed=0):
    """A smooth, textured BGR uint8 image (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size=(size[0] // 16, size[1] // 16, 3)).astype(np.float32)
    image = cv2.resize(noise, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_reference_256x704_numbers():
    transform = preprocess.test_time_transform(SOURCE, (256, 704))
    assert transform.size == (256, 704)
    np.testing.assert_allclose(transform.post_rot, np.diag([0.44, 0.44, 1.0]), atol=1e-7)
    np.testing.assert_allclose(transform.post_tran, [0.0, -140.0, 0.0], atol=1e-5)
    assert transform.post_rot.dtype == transform.post_tran.dtype == np.float32


def test_reference_512x1408_numbers():
    # 1408 / 1600 = 0.88 -> 792 x 1408, keep the bottom 512 rows: offset 280.
    transform = preprocess.test_time_transform(SOURCE, (512, 1408))
    np.testing.assert_allclose(transform.post_rot, np.diag([0.88, 0.88, 1.0]), atol=1e-7)
    np.testing.assert_allclose(transform.post_tran, [0.0, -280.0, 0.0], atol=1e-5)


def test_test_time_warp_equals_resize_then_crop():
    image = smooth_image(SOURCE)
    warped = apply_transform(image, preprocess.test_time_transform(SOURCE, (256, 704)))
    resized = cv2.resize(image, (704, 396), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(warped, resized[140:])


@pytest.mark.parametrize(("resize", "crop_top", "crop_left", "flip", "degrees"),
                         [(0.44, 140, 0, False, 0.0), (0.5, 150, 48, True, 0.0), (0.47, 120, 20, True, -5.4),
                          (0.39, 95, 0, False, 4.0)])
def test_chained_transform_matches_reference_formula(resize, crop_top, crop_left, flip, degrees):
    transform = ImageTransform.identity(SOURCE).resize(resize).crop(crop_top, crop_left, (256, 704))
    transform = transform.flip() if flip else transform
    transform = transform.rotate(degrees)
    crop = (crop_left, crop_top, crop_left + 704, crop_top + 256)  # PIL box, as the reference passes it
    post_rot, post_tran = reference_post_transform(resize, crop, flip, degrees)
    np.testing.assert_allclose(np.asarray(transform.linear), post_rot, atol=1e-12)
    np.testing.assert_allclose(transform.offset, post_tran, atol=1e-9)
    assert transform.size == (256, 704)


def test_then_composes_like_applying_one_after_the_other():
    first = ImageTransform.identity(SOURCE).resize(0.5).crop(10, 20, (300, 600))
    second = ImageTransform.identity((300, 600)).flip().rotate(30.0)
    points = np.random.default_rng(1).uniform(0, 900, size=(20, 2))
    np.testing.assert_allclose(first.then(second).apply_to_points(points),
                               second.apply_to_points(first.apply_to_points(points)), atol=1e-9)
    with pytest.raises(ValueError, match="compose"):
        second.then(first)


def test_projection_through_transformed_image_matches_original_camera():
    # A 3D point projects to pixel p in the source image; after the transform it is post_rot p + post_tran,
    # which is also what the "transformed camera" (post_rot @ K, post_tran) gives directly.
    transform = ImageTransform.identity(SOURCE).resize(0.47).crop(120, 20, (256, 704)).flip().rotate(-5.4)
    points = np.array([[12.0, 1.5, 0.8], [25.0, -4.0, 2.0], [8.0, 0.0, 0.0]])
    pixels, depth = ego_to_pixels(points, INTRINSIC, SENSOR2EGO)
    moved = transform.apply_to_points(pixels)
    homogeneous = np.concatenate([pixels * depth[:, None], depth[:, None]], axis=1)
    camera_points = homogeneous @ np.linalg.inv(INTRINSIC).T
    direct = camera_points @ (transform.post_rot.astype(np.float64) @ INTRINSIC).T
    np.testing.assert_allclose(direct[:, :2] / direct[:, 2:] + transform.post_tran[:2], moved, atol=1e-3)


@pytest.mark.parametrize("augmented", [False, True])
def test_a_dot_lands_where_the_transform_puts_it(augmented):
    transform = preprocess.test_time_transform(SOURCE, (256, 704))
    if augmented:
        transform = ImageTransform.identity(SOURCE).resize(0.52).crop(160, 60, (256, 704)).flip().rotate(7.0)
    point_ego = np.array([[14.0, 1.2, 0.3]])
    pixels, _ = ego_to_pixels(point_ego, INTRINSIC, SENSOR2EGO)
    expected = transform.apply_to_points(pixels)[0]
    assert 20 < expected[0] < 684 and 20 < expected[1] < 236  # the dot stays inside the input
    warped = apply_transform(blob_image(SOURCE, pixels[0]), transform)
    # Half a pixel of convention error would show as 0.28 px at scale 0.44; the warp is exact to ~0.02 px.
    np.testing.assert_allclose(blob_centre(warped), expected, atol=0.05)


def test_reduced_scale_decoding_keeps_geometry_and_nearly_the_pixels():
    transform = preprocess.test_time_transform(SOURCE, (256, 704))
    assert decode_scale(transform) == 0.5
    ok, jpeg = cv2.imencode(".jpg", smooth_image(SOURCE), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    full = decode_image(jpeg.tobytes())
    half = decode_image(jpeg.tobytes(), 0.5)
    assert full.shape == (900, 1600, 3) and half.shape == (450, 800, 3)
    # The transform (post_rot/post_tran) is the same object whatever the decode scale: geometry is exact.
    from_full = apply_transform(full, transform).astype(np.float64)
    from_half = apply_transform(half, transform, decoded_scale=0.5).astype(np.float64)
    assert np.abs(from_full - from_half).mean() < 1.5
    assert np.abs(from_full - from_half).max() < 20


def test_reduced_scale_dot_position():
    transform = preprocess.test_time_transform(SOURCE, (256, 704))
    centre = np.array([700.3, 610.8])
    half = cv2.resize(blob_image(SOURCE, centre, sigma=6.0), (800, 450), interpolation=cv2.INTER_AREA)
    warped = apply_transform(half, transform, decoded_scale=0.5)
    np.testing.assert_allclose(blob_centre(warped), transform.apply_to_points(centre), atol=0.05)


def test_decode_scale_choices():
    assert decode_scale(preprocess.test_time_transform(SOURCE, (512, 1408))) == 1.0  # 0.88 needs full
    assert decode_scale(preprocess.test_time_transform(SOURCE, (128, 352))) == 0.25  # 0.22
    assert decode_scale(ImageTransform.identity(SOURCE).resize(2.0)) == 1.0


def test_upscaling_and_rotation_keep_size_and_type():
    transform = ImageTransform.identity((90, 160)).resize(2.0).rotate(90.0)
    warped = apply_transform(smooth_image((96, 160))[:90], transform)
    assert warped.shape == (180, 320, 3) and warped.dtype == np.uint8


def test_wrong_image_size_and_undecodable_bytes_are_input_errors():
    transform = preprocess.test_time_transform(SOURCE, (256, 704))
    with pytest.raises(InputError, match="900 x 1600"):
        apply_transform(np.zeros((450, 800, 3), np.uint8), transform)
    with pytest.raises(InputError, match="CAM_FRONT"):
        decode_image(b"not an image", field="CAM_FRONT")
    with pytest.raises(InputError, match="CAM_BACK"):
        decode_image(b"", field="CAM_BACK")


def test_model_inputs_keep_opencvs_channel_order_and_the_reference_constants():
    image = np.zeros((90, 160, 3), np.uint8)
    image[..., 0] = 10  # blue, first in OpenCV's order and in the networks'
    image[..., 2] = 200  # red
    transform = preprocess.test_time_transform((90, 160), (32, 64))
    for resampling in network_input.RESAMPLINGS:
        model_input = preprocess.model_input_image(cv2.imencode(".png", image)[1].tobytes(), "png", transform,
                                                   resampling)
        assert (model_input[..., 0] == 10).all() and (model_input[..., 2] == 200).all(), resampling
    assert network_input.CHANNEL_ORDER == "bgr"
    assert network_input.NORMALIZE_MEAN == (123.675, 116.28, 103.53)  # subtracted from B, G, R, in that order
    assert network_input.NORMALIZE_STD == (58.395, 57.12, 57.375)


def test_rotation_direction_is_counter_clockwise_as_displayed():
    # A point right of the centre moves up (smaller v) under a positive rotation, as PIL's rotate does.
    transform = ImageTransform.identity((100, 100)).rotate(90.0)
    np.testing.assert_allclose(transform.apply_to_points([80.0, 50.0]), [50.0, 20.0], atol=1e-9)
    assert math.isclose(transform.linear[0][1], 1.0)
