"""Version pickup of the embedded backend: a thread that re-checks the repository every few seconds,
and the dummy frame a new ONNX Runtime session answers once before it replaces the old one."""

import logging
import threading
from collections.abc import Callable

import numpy as np

from occupancy import model_contract as contract
from occupancy.cameras import NUM_CAMERAS
from occupancy.model_contract import ModelMetadata

log = logging.getLogger("service.watch")

# Camera axes (x right, y down, z forward) -> ego axes (x forward, y left, z up): a camera looking ahead.
_CAMERA_TO_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], np.float32)


class Poller:
    """Calls `check()` every `interval_s` seconds on a daemon thread until `stop()`; an exception in
    `check` is logged and the next round runs anyway (a half-broken repository must not end the watch)."""

    def __init__(self, check: Callable[[], None], interval_s: float, name: str):
        self._check, self._interval_s = check, interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the thread to end and wait for the round in progress (a session load) to finish."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._check()
            except Exception:
                log.exception("version check failed; trying again in %.1f s", self._interval_s)


def warmup_inputs(model: ModelMetadata) -> dict[str, np.ndarray]:
    """A plausible frame of batch 1 (`occupancy.model_contract` names): six cameras 1.5 m up, looking
    ahead, mid-grey images. Zero matrices would make the geometry singular (NaN voxel indices), which
    tests nothing of a real frame; this one exercises the same code path as a request. A temporal model's
    frame is a cold start.

    Shapes: images 1 x 6 x 3 x H x W uint8; intrinsics 1 x 6 x 3 x 3; sensor2ego 1 x 6 x 4 x 4;
    post_rots 1 x 6 x 3 x 3; post_trans 1 x 6 x 3 (float32).
    """
    height, width = model.input_size
    intrinsic = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float32)
    sensor2ego = np.eye(4, dtype=np.float32)
    sensor2ego[:3, :3], sensor2ego[:3, 3] = _CAMERA_TO_EGO, (1.0, 0.0, 1.5)
    cameras = (1, NUM_CAMERAS)
    inputs = {
        contract.IMAGES: np.full((*cameras, 3, height, width), 128, np.uint8),
        contract.INTRINSICS: np.broadcast_to(intrinsic, (*cameras, 3, 3)).copy(),
        contract.SENSOR2EGO: np.broadcast_to(sensor2ego, (*cameras, 4, 4)).copy(),
        contract.POST_ROTS: np.broadcast_to(np.eye(3, dtype=np.float32), (*cameras, 3, 3)).copy(),
        contract.POST_TRANS: np.zeros((*cameras, 3), np.float32),
    }
    if model.temporal:
        inputs |= {contract.PREV_SENSOR2EGO: inputs[contract.SENSOR2EGO],
                   contract.HISTORY: np.zeros((1, 1), contract.HISTORY_DTYPE),
                   **{tensor.name: np.zeros((1, *tensor.shape), tensor.dtype) for tensor in model.state}}
    return inputs
