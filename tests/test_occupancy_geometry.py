"""Camera geometry: projections checked against hand-computed pixels."""

import numpy as np
import pytest

from occupancy.geometry import (
    camera_to_pixels,
    ego_to_pixels,
    invert_rigid,
    pixels_to_camera,
    pixels_to_ego,
    pose_matrix,
    quaternion_to_matrix,
    sensor_to_key_ego,
)

# A front camera: optical axis (camera z) along ego +x, camera x (image right) along ego -y, camera y
# (image down) along ego -z; the nuScenes CAM_FRONT quaternion is close to this one.
FRONT_ROTATION = (0.5, -0.5, 0.5, -0.5)
FRONT_TRANSLATION = (1.5, 0.0, 1.6)
# Different fx and fy so that a swapped axis shows.
INTRINSIC = np.array([[1000.0, 0.0, 800.0], [0.0, 800.0, 450.0], [0.0, 0.0, 1.0]])


def test_front_camera_rotation_maps_camera_axes_to_ego_axes():
    rotation = quaternion_to_matrix(FRONT_ROTATION)
    np.testing.assert_allclose(rotation @ [0, 0, 1], [1, 0, 0], atol=1e-12)  # optical axis -> forward
    np.testing.assert_allclose(rotation @ [1, 0, 0], [0, -1, 0], atol=1e-12)  # image right -> ego right
    np.testing.assert_allclose(rotation @ [0, 1, 0], [0, 0, -1], atol=1e-12)  # image down -> ego down


@pytest.mark.parametrize(
    ("point_ego", "pixel", "depth"),
    [
        # 10 m ahead of the camera, 2 m to its left, at its height: u = 800 - 1000 * 2 / 10.
        ((11.5, 2.0, 1.6), (600.0, 450.0), 10.0),
        # 5 m ahead, 1 m right, 1 m below: u = 800 + 1000 / 5, v = 450 + 800 / 5.
        ((6.5, -1.0, 0.6), (1000.0, 610.0), 5.0),
        # On the optical axis: the principal point.
        ((31.5, 0.0, 1.6), (800.0, 450.0), 30.0),
    ],
)
def test_ego_to_pixels_matches_hand_computed_projection(point_ego, pixel, depth):
    sensor2ego = pose_matrix(FRONT_TRANSLATION, FRONT_ROTATION)
    pixels, depths = ego_to_pixels(np.array([point_ego]), INTRINSIC, sensor2ego)
    np.testing.assert_allclose(pixels[0], pixel, atol=1e-9)
    np.testing.assert_allclose(depths[0], depth, atol=1e-12)
    np.testing.assert_allclose(pixels_to_ego(pixels, depths, INTRINSIC, sensor2ego)[0], point_ego, atol=1e-9)


def test_point_behind_camera_has_negative_depth():
    sensor2ego = pose_matrix(FRONT_TRANSLATION, FRONT_ROTATION)
    _, depth = ego_to_pixels(np.array([[-3.5, 0.0, 1.6]]), INTRINSIC, sensor2ego)
    assert depth[0] == pytest.approx(-5.0)


def test_round_trip_through_random_cameras():
    rng = np.random.default_rng(0)
    for _ in range(5):
        sensor2ego = pose_matrix(rng.normal(size=3), rng.normal(size=4))
        intrinsic = np.array([[rng.uniform(500, 1500), 0.3, rng.uniform(600, 1000)],
                              [0.0, rng.uniform(500, 1500), rng.uniform(300, 600)],
                              [0.0, 0.0, 1.0]])
        pixels = rng.uniform(0, 1600, size=(50, 2))
        depth = rng.uniform(1, 60, size=50)
        points = pixels_to_ego(pixels, depth, intrinsic, sensor2ego)
        back, back_depth = ego_to_pixels(points, intrinsic, sensor2ego)
        np.testing.assert_allclose(back, pixels, atol=1e-7)
        np.testing.assert_allclose(back_depth, depth, atol=1e-9)


def test_invert_rigid_matches_matrix_inverse():
    transform = pose_matrix([3.0, -2.0, 0.5], [0.3, 0.1, -0.7, 0.2])
    np.testing.assert_allclose(invert_rigid(transform), np.linalg.inv(transform), atol=1e-12)


def test_camera_projection_keeps_leading_dimensions():
    points = np.array([[[0.0, 0.0, 2.0], [1.0, -1.0, 4.0]]])  # 1 x 2 x 3
    pixels, depth = camera_to_pixels(points, INTRINSIC)
    assert pixels.shape == (1, 2, 2) and depth.shape == (1, 2)
    np.testing.assert_allclose(pixels[0, 1], [800 + 250, 450 - 200])
    np.testing.assert_allclose(pixels_to_camera(pixels, depth, INTRINSIC), points, atol=1e-12)


def test_sensor_to_key_ego_by_hand():
    """Key ego at global (10, 0, 0) facing +x; the camera's ego at global (12, 1, 0) turned 90 degrees
    left; the camera 1 m ahead of its ego, axes as the ego's. In the key ego frame the camera is at
    (12, 1, 0) + R_z(90)(1, 0, 0) - (10, 0, 0) = (2, 2, 0), turned 90 degrees left."""
    quarter_turn = [np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]  # (w, x, y, z): +90 degrees about z
    key_ego2global = pose_matrix([10.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    ego2global = pose_matrix([12.0, 1.0, 0.0], quarter_turn)
    sensor2ego = pose_matrix([1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    expected = np.array([[0.0, -1.0, 0.0, 2.0], [1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1]])
    composed = sensor_to_key_ego(sensor2ego, ego2global, key_ego2global)
    assert composed.dtype == np.float64
    np.testing.assert_allclose(composed, expected, atol=1e-12)
    # Batched (... x 4 x 4): the key camera itself maps to its own sensor2ego.
    stacked = sensor_to_key_ego(np.stack([sensor2ego, sensor2ego]), np.stack([key_ego2global, ego2global]),
                                key_ego2global)
    np.testing.assert_allclose(stacked, [sensor2ego, expected], atol=1e-12)
