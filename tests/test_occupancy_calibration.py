"""The calibration schema: valid frames, arrays in camera order, bad input rejected with the field named."""

import copy
import json

import numpy as np
import pytest
from pydantic import ValidationError

from occupancy.calibration import CameraCalibration, FrameCalibration, Pose, parse_calibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from occupancy.geometry import pose_matrix, quaternion_to_matrix


def camera(index: int) -> dict:
    """A camera whose numbers depend on its index, so an ordering mistake shows."""
    return {
        "intrinsic": [[1000.0 + index, 0.0, 800.0], [0.0, 1000.0 + index, 450.0], [0.0, 0.0, 1.0]],
        "sensor2ego": {"translation": [1.0, 0.1 * index, 1.5], "rotation": [0.5, -0.5, 0.5, -0.5]},
    }


def frame() -> dict:
    return {
        "cameras": {name: camera(index) for index, name in enumerate(CAMERA_NAMES)},
        "ego2global": {"translation": [600.1, 1647.5, 0.0], "rotation": [0.57, -0.0, 0.0, 0.82]},
        "timestamp": 1533151603547590,
        "sequence_id": "scene-0103",
    }


def assert_rejected(data, *fragments):
    with pytest.raises(InputError) as error:
        parse_calibration(data)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_valid_frame_builds_arrays_in_camera_order():
    data = frame()
    data["cameras"] = dict(reversed(data["cameras"].items()))  # the JSON's key order must not matter
    calibration = parse_calibration(json.dumps(data))
    intrinsics, sensor2ego = calibration.intrinsics_array(), calibration.sensor2ego_array()
    assert intrinsics.shape == (6, 3, 3) and intrinsics.dtype == np.float32
    assert sensor2ego.shape == (6, 4, 4) and sensor2ego.dtype == np.float32
    np.testing.assert_allclose(intrinsics[:, 0, 0], 1000.0 + np.arange(6))
    np.testing.assert_allclose(sensor2ego[:, 1, 3], 0.1 * np.arange(6), atol=1e-7)
    np.testing.assert_allclose(sensor2ego[2, :3, :3], quaternion_to_matrix([0.5, -0.5, 0.5, -0.5]), atol=1e-7)
    np.testing.assert_allclose(sensor2ego[:, 3], np.tile([0, 0, 0, 1], (6, 1)))
    ego2global = calibration.ego2global_array()
    assert ego2global.shape == (4, 4) and ego2global.dtype == np.float32
    np.testing.assert_allclose(ego2global[:3, 3], [600.1, 1647.5, 0.0], rtol=1e-6)
    assert list(calibration.cameras) == list(CAMERA_NAMES)
    calibration.require_temporal()


def test_optional_fields_and_json_round_trip():
    data = frame()
    for name in ("ego2global", "timestamp", "sequence_id"):
        del data[name]
    calibration = parse_calibration(data)
    assert calibration.ego2global_array() is None
    with pytest.raises(InputError, match="ego2global, timestamp, sequence_id"):
        calibration.require_temporal()
    full = parse_calibration(frame())
    assert parse_calibration(full.model_dump_json()) == full


def test_quaternion_is_stored_normalised():
    pose = Pose(translation=(0, 0, 0), rotation=(2.0, 0.0, 0.0, 0.0))
    assert pose.rotation == (1.0, 0.0, 0.0, 0.0)
    pose = Pose(translation=(0, 0, 0), rotation=(1.0, 2.0, -3.0, 4.0))
    assert np.linalg.norm(pose.rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(pose.matrix()[:3, :3], quaternion_to_matrix([1.0, 2.0, -3.0, 4.0]))
    huge = Pose(translation=(0, 0, 0), rotation=(1e300, 1e300, 0.0, 0.0))  # squares overflow, hypot does not
    assert huge.rotation == pytest.approx((2**-0.5, 2**-0.5, 0.0, 0.0))


def test_missing_camera():
    data = frame()
    del data["cameras"]["CAM_BACK"]
    assert_rejected(data, "calibration.cameras", "missing CAM_BACK")


def test_unknown_camera():
    data = frame()
    data["cameras"]["CAM_ROOF"] = camera(0)
    assert_rejected(data, "calibration.cameras", "unknown CAM_ROOF")


def test_duplicate_camera_in_json_text():
    text = json.dumps(frame())
    second = f'"CAM_FRONT": {json.dumps(camera(9))}, "CAM_FRONT": {{'
    duplicated = text.replace('"CAM_FRONT": {', second, 1)
    assert duplicated.count('"CAM_FRONT":') == 2
    assert_rejected(duplicated, "calibration", "duplicate", "CAM_FRONT")


INTRINSIC, SENSOR2EGO = "cameras.CAM_FRONT.intrinsic", "cameras.CAM_FRONT.sensor2ego"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda cam: cam.update(intrinsic=[[1000.0, 0.0, 800.0], [0.0, 1000.0, 450.0]]), INTRINSIC),
        (lambda cam: cam["intrinsic"][0].__setitem__(2, float("nan")), INTRINSIC),
        (lambda cam: cam["intrinsic"][1].__setitem__(1, float("inf")), INTRINSIC),
        (lambda cam: cam["intrinsic"][0].__setitem__(0, -1000.0), INTRINSIC),
        (lambda cam: cam["intrinsic"][1].__setitem__(1, 0.0), INTRINSIC),
        (lambda cam: cam["intrinsic"].__setitem__(2, [0.0, 0.1, 1.0]), INTRINSIC),
        (lambda cam: cam["sensor2ego"].update(rotation=[0, 0, 0, 0]), f"{SENSOR2EGO}.rotation"),
        (lambda cam: cam["sensor2ego"].update(rotation=[1, 0, 0]), f"{SENSOR2EGO}.rotation"),
        (lambda cam: cam["sensor2ego"].update(translation=[1, "x", 0]), f"{SENSOR2EGO}.translation"),
        (lambda cam: cam.pop("sensor2ego"), SENSOR2EGO),
        (lambda cam: cam.update(intrinsics=cam["intrinsic"]), "cameras.CAM_FRONT.intrinsics"),
    ],
)
def test_bad_camera_is_rejected_with_its_field(change, field):
    data = copy.deepcopy(frame())
    change(data["cameras"]["CAM_FRONT"])
    assert_rejected(data, f"calibration.{field}")


def test_nan_in_json_text_names_the_field():
    text = json.dumps(frame()).replace("[1003.0, 0.0, 800.0]", "[NaN, 0.0, 800.0]")  # CAM_BACK_LEFT
    assert_rejected(text, "calibration.cameras.CAM_BACK_LEFT.intrinsic.0.0")


@pytest.mark.parametrize(
    ("field", "value"),
    [("timestamp", -1), ("timestamp", 1.5), ("timestamp", "12"), ("sequence_id", ""),
     ("ego2global", {"translation": [0, 0, 0], "rotation": [0, 0, 0, 0]})],
)
def test_bad_frame_fields(field, value):
    data = frame()
    data[field] = value
    assert_rejected(data, f"calibration.{field}")


def test_not_json_and_not_an_object():
    assert_rejected("{not json", "calibration", "not valid JSON")
    assert_rejected("[1, 2]", "calibration")


def test_pydantic_loc_names_the_field():
    data = frame()
    data["cameras"]["CAM_FRONT"]["intrinsic"][0][0] = -5.0
    with pytest.raises(ValidationError) as error:
        FrameCalibration.model_validate(data)
    assert error.value.errors()[0]["loc"] == ("cameras", "CAM_FRONT", "intrinsic")


def test_from_arrays_round_trip():
    rng = np.random.default_rng(0)
    intrinsics = np.tile(np.array([[1260.0, 0.0, 800.0], [0.0, 1260.0, 450.0], [0.0, 0.0, 1.0]]), (6, 1, 1))
    intrinsics[:, 0, 0] += np.arange(6)
    sensor2ego = np.stack([pose_matrix(rng.normal(size=3), rng.normal(size=4)) for _ in range(6)])
    ego2global = pose_matrix([600.0, 1600.0, 0.0], [0.57, 0.0, 0.0, 0.82])
    calibration = FrameCalibration.from_arrays(intrinsics.astype(np.float32), sensor2ego.astype(np.float32),
                                               ego2global, timestamp=np.int64(15), sequence_id="scene-1")
    np.testing.assert_allclose(calibration.intrinsics_array(), intrinsics, rtol=1e-7)
    np.testing.assert_allclose(calibration.sensor2ego_array(), sensor2ego, atol=1e-6)
    np.testing.assert_allclose(calibration.ego2global_array(), ego2global, rtol=1e-6)
    assert calibration.timestamp == 15 and calibration.sequence_id == "scene-1"


def test_from_arrays_rejects_bad_arrays_naming_them():
    intrinsics = np.tile(np.array([[1260.0, 0.0, 800.0], [0.0, 1260.0, 450.0], [0.0, 0.0, 1.0]]), (6, 1, 1))
    sensor2ego = np.tile(np.eye(4), (6, 1, 1))
    with pytest.raises(InputError, match="intrinsics"):
        FrameCalibration.from_arrays(intrinsics[:5], sensor2ego)
    sheared = sensor2ego.copy()
    sheared[4, 0, 1] = 0.5
    with pytest.raises(InputError, match=r"cameras\.CAM_BACK\.sensor2ego"):
        FrameCalibration.from_arrays(intrinsics, sheared)
    mirrored = sensor2ego.copy()
    mirrored[0, 0, 0] = -1.0
    with pytest.raises(InputError, match=r"cameras\.CAM_FRONT_LEFT\.sensor2ego"):
        FrameCalibration.from_arrays(intrinsics, mirrored)
    negative_focal = intrinsics.copy()
    negative_focal[1, 1, 1] = -1.0
    with pytest.raises(InputError, match=r"cameras\.CAM_FRONT\.intrinsic"):
        FrameCalibration.from_arrays(negative_focal, sensor2ego)


def test_camera_calibration_is_frozen():
    calibration = CameraCalibration.model_validate(camera(0))
    with pytest.raises(ValidationError):
        calibration.intrinsic = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def test_json_is_bounded_in_depth_and_integer_length():
    """100,000 nested brackets and a 5,000-digit integer: errors naming the input or the field, where
    Python's parser alone raises RecursionError and ValueError."""
    from occupancy.errors import MalformedInput

    deep = '{"cameras": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(MalformedInput, match="calibration: JSON nested deeper than 16 levels"):
        parse_calibration(deep)
    text = json.dumps(frame()).replace("1533151603547590", "9" * 5000)
    with pytest.raises(InputError, match=r"calibration\.timestamp: Input should be a valid integer"):
        parse_calibration(text)
    # Brackets inside strings do not count, and escaped quotes do not end a string.
    nested_text = json.dumps({**frame(), "sequence_id": '[[[[[[[[[[[[[[[[[["' + "\\" * 3 + '{{{'})
    assert parse_calibration(nested_text).sequence_id.startswith("[[[[")


def test_cameras_may_carry_their_own_ego_poses():
    data = frame()
    data["cameras"]["CAM_FRONT"]["ego2global"] = {"translation": [601.0, 1647.0, 0.0],
                                                  "rotation": [1.0, 0.0, 0.0, 0.0]}
    data["cameras"]["CAM_FRONT"]["timestamp"] = 1533151603547600
    calibration = parse_calibration(data)
    assert calibration.camera_poses_given()
    front = CAMERA_NAMES.index("CAM_FRONT")
    # The other cameras fall back on the frame's pose, the key camera's (CAM_FRONT_LEFT) among them:
    # they keep their own sensor2ego.
    np.testing.assert_allclose(calibration.sensor2ego_array()[front - 1],
                               pose_matrix(**data["cameras"]["CAM_FRONT_LEFT"]["sensor2ego"]), atol=1e-5)
    assert not np.allclose(calibration.sensor2ego_array()[front],
                           pose_matrix(**data["cameras"]["CAM_FRONT"]["sensor2ego"]), atol=1e-3)
    del data["ego2global"]
    with pytest.raises(InputError, match=r"CAM_FRONT_LEFT, CAM_FRONT_RIGHT.* no ego2global"):
        parse_calibration(data)
