"""The six surround cameras, in the order every tensor and request uses."""

CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)
NUM_CAMERAS = len(CAMERA_NAMES)
# Whose ego pose is a frame's ego: the reference's first camera (BEVDet `prepare_inputs`:
# ego2globals[:, 0, 0]).
KEY_CAMERA = CAMERA_NAMES[0]
# nuScenes source images, (height, width).
SOURCE_IMAGE_SIZE: tuple[int, int] = (900, 1600)
