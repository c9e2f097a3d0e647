"""Which past frame a temporal model's frame uses, and when a sequence starts over (numpy only).

A temporal model (occupancy.model_contract) fuses a frame with the one before it, which in training was
`frame_gap_s` earlier (0.5 s: nuScenes keyframes), and carries the state of that frame. The gateway
(service/core/sequences.py) and `occ eval --onnx` both follow these rules, so a model is evaluated with
the history it gets when served.

A sequence keeps a few past frames, each with the state its run returned. For a new frame, in order:
1. a reset (every kept frame dropped, the frame a cold start) when its calibration differs from the kept
   frames', its timestamp is not after the newest kept frame's, it is more than `max_gap_s` after it, or
   its key ego (CAM_FRONT_LEFT's ego pose) is more than `max_jump_m` from the newest frame's;
2. else the kept frame whose age is nearest to the trained gap, among those at least
   `frame_gap_s - tolerance_s` and at most `max_gap_s` old: the previous frame of a 12 Hz camera is 83 ms
   old, far from what the model was trained on, so such a client gets the frame about 0.5 s back;
3. else (every kept frame is younger than that: the first half second of a fast client) no history, and
   the kept frames stay.
The frame then runs with `history` = 0 without a past frame, else the past frame's own history + 1, at
most MAX_HISTORY (that frame's t-1 is this frame's t-2), and is kept: unless it is less than
`frame_gap_s / max_frames` after the newest kept frame (a fast client keeps every few frames), after
dropping the kept frames no later frame can choose (older than one already `frame_gap_s` old) and, beyond
`max_frames`, the oldest. A sequence so holds at most `max_frames` states.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from occupancy import model_contract as contract
from occupancy.geometry import sensor_to_key_ego
from occupancy.model_contract import MAX_HISTORY

# The HTTP headers of a sequence: the client sends the id (a load balancer may route by it without reading
# the body); a .npy answer carries the JSON answer's `sequence` members in them.
SEQUENCE_HEADERS: dict[str, str] = {"id": "X-Sequence-Id", "frame_index": "X-Sequence-Frame-Index",
                                    "history": "X-Sequence-History", "reset": "X-Sequence-Reset"}
SEQUENCE_HEADER = SEQUENCE_HEADERS["id"]
US_PER_S = 1_000_000
# Calibrations equal to this tolerance are the same rig (a float32 round trip of the same JSON is exact).
CALIBRATION_TOLERANCE = 1e-6


class Reset(StrEnum):
    """Why a frame of a sequence with kept frames starts without history, and the kept frames are dropped."""

    CALIBRATION = "calibration"  # intrinsics, camera mounting or image size changed
    TIMESTAMP_BACKWARDS = "timestamp_backwards"  # not after the newest kept frame (a repeat, or out of order)
    TIMESTAMP_GAP = "timestamp_gap"  # more than max_gap_s after the newest kept frame
    POSE_JUMP = "pose_jump"  # the key ego moved more than max_jump_m from the newest kept frame


@dataclass(frozen=True)
class SequenceRules:
    """The numbers of the rules in the module doc; `frame_gap_s` is the served model's (occ.frame_gap_s)."""

    frame_gap_s: float = 0.5
    tolerance_s: float = 0.25  # past frames younger than frame_gap_s - tolerance_s are not used
    max_gap_s: float = 1.0  # two keyframe gaps: one lost frame is bridged, a longer pause resets
    max_jump_m: float = 20.0  # the key ego's move from the newest kept frame (1 s at 72 km/h)
    max_frames: int = 3  # states kept per sequence

    def __post_init__(self) -> None:
        if not (0 < self.frame_gap_s <= self.max_gap_s and self.tolerance_s >= 0 and self.max_jump_m > 0
                and self.max_frames >= 1):
            raise ValueError(f"sequence rules need 0 < frame gap <= max gap, a tolerance of 0 or more, a "
                             f"positive jump and at least one kept frame: {self}")

    def for_model(self, frame_gap_s: float | None) -> "SequenceRules":
        """These rules for a model trained `frame_gap_s` apart (a max gap below it is raised to it)."""
        if frame_gap_s is None:
            return self
        return replace(self, frame_gap_s=frame_gap_s, max_gap_s=max(self.max_gap_s, frame_gap_s))

    @property
    def min_age_s(self) -> float:
        return max(0.0, self.frame_gap_s - self.tolerance_s)

    @property
    def spacing_s(self) -> float:
        """The least time between kept frames."""
        return self.frame_gap_s / self.max_frames


@dataclass(frozen=True)
class FrameMotion:
    """Where and when a frame was taken, and the rig that took it.

    `mounts` (N x 4 x 4, camera -> its ego, nuScenes calibrated_sensor) and `ego2global` (N x 4 x 4, each
    camera's ego pose; the frame's for every camera without its own) in float64, camera 0 the key camera;
    `calibration` everything else the model's state depends on (intrinsics and image transforms), flat.
    """

    timestamp_us: int
    mounts: np.ndarray
    ego2global: np.ndarray
    calibration: np.ndarray

    @classmethod
    def of(cls, timestamp_us: int, mounts: np.ndarray, ego2global: np.ndarray, intrinsics: np.ndarray,
           post_rots: np.ndarray, post_trans: np.ndarray) -> "FrameMotion":
        """A frame's motion from its poses and the model inputs its state depends on (N x 3 x 3, N x 3 x 3,
        N x 3, batch dimensions dropped)."""
        calibration = np.concatenate([np.asarray(array, np.float64).ravel()
                                      for array in (intrinsics, post_rots, post_trans)])
        return cls(int(timestamp_us), np.asarray(mounts, np.float64), np.asarray(ego2global, np.float64),
                   calibration)

    @property
    def key_ego2global(self) -> np.ndarray:
        return self.ego2global[0]

    def cameras_in_ego_of(self, frame: "FrameMotion") -> np.ndarray:
        """This frame's cameras in `frame`'s key ego, float32 1 x N x 4 x 4 (the reference's composition)."""
        return sensor_to_key_ego(self.mounts, self.ego2global, frame.key_ego2global).astype(np.float32)[None]

    def same_rig(self, other: "FrameMotion") -> bool:
        return (self.calibration.shape == other.calibration.shape
                and np.allclose(self.calibration, other.calibration, rtol=CALIBRATION_TOLERANCE,
                                atol=CALIBRATION_TOLERANCE)
                and np.allclose(self.mounts, other.mounts, rtol=CALIBRATION_TOLERANCE,
                                atol=CALIBRATION_TOLERANCE))


@dataclass(frozen=True)
class PastFrame:
    """A kept frame: its motion, the history it ran with, and the state its run returned (batch 1)."""

    motion: FrameMotion
    history: int
    state: Mapping[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.state.values())


@dataclass(frozen=True)
class Step:
    """What a frame runs with: the past frame it uses (None: a cold start), the history and why not more."""

    previous: PastFrame | None
    history: int
    reset: Reset | None = None  # the kept frames were dropped for this reason

    def gap_s(self, motion: FrameMotion) -> float | None:
        """Seconds from the past frame used to this one."""
        if self.previous is None:
            return None
        return (motion.timestamp_us - self.previous.motion.timestamp_us) / US_PER_S


@dataclass
class SequenceHistory:
    """The kept frames of one sequence, oldest first, and the rules that pick and keep them."""

    rules: SequenceRules
    frames: list[PastFrame] = field(default_factory=list)

    def step(self, motion: FrameMotion) -> Step:
        """The past frame `motion`'s frame uses (rules 1-3 of the module doc); a reset drops the kept ones."""
        reset = self._reset(motion)
        if reset is not None:
            self.frames = []
            return Step(None, 0, reset)
        previous = self._nearest_to_gap(motion.timestamp_us)
        return Step(previous, 0 if previous is None else min(previous.history + 1, MAX_HISTORY))

    def keep(self, frame: PastFrame) -> None:
        """Keep a frame that ran (after `step`), dropping what no later frame can use."""
        now = frame.motion.timestamp_us
        newest = self.frames[-1] if self.frames else None
        if newest is not None and now - newest.motion.timestamp_us < self.rules.spacing_s * US_PER_S:
            return
        old_enough = [i for i, kept in enumerate(self.frames)
                      if self._age_s(kept, now) >= self.rules.frame_gap_s]
        frames = self.frames[old_enough[-1]:] if old_enough else self.frames
        self.frames = [*frames, frame][-self.rules.max_frames:]

    @property
    def nbytes(self) -> int:
        return sum(frame.nbytes for frame in self.frames)

    def _reset(self, motion: FrameMotion) -> Reset | None:
        if not self.frames:
            return None
        newest = self.frames[-1].motion
        if not motion.same_rig(newest):
            return Reset.CALIBRATION
        if motion.timestamp_us <= newest.timestamp_us:
            return Reset.TIMESTAMP_BACKWARDS
        if motion.timestamp_us - newest.timestamp_us > self.rules.max_gap_s * US_PER_S:
            return Reset.TIMESTAMP_GAP
        moved = motion.key_ego2global[:3, 3] - newest.key_ego2global[:3, 3]
        if float(np.linalg.norm(moved)) > self.rules.max_jump_m:
            return Reset.POSE_JUMP
        return None

    def _nearest_to_gap(self, now_us: int) -> PastFrame | None:
        """The kept frame nearest to the trained gap with an age in [gap - tolerance, max gap]; the newer on
        a tie."""
        usable = [frame for frame in self.frames
                  if self.rules.min_age_s <= self._age_s(frame, now_us) <= self.rules.max_gap_s]
        if not usable:
            return None
        gap = self.rules.frame_gap_s
        return min(reversed(usable), key=lambda frame: abs(self._age_s(frame, now_us) - gap))

    @staticmethod
    def _age_s(frame: PastFrame, now_us: int) -> float:
        return (now_us - frame.motion.timestamp_us) / US_PER_S


def model_inputs(step: Step, motion: FrameMotion, zero_state: Mapping[str, np.ndarray],
                 ) -> dict[str, np.ndarray]:
    """A temporal model's inputs beyond the frame's (occupancy.model_contract TEMPORAL_INPUT_NAMES): the
    past frame's cameras in this frame's key ego, the history and the past frame's state; on a cold start
    `zero_state` (model_contract.zero_state) and identity cameras, which the graph does not read."""
    history = np.full((1, 1), step.history, contract.HISTORY_DTYPE)
    if step.previous is None:
        cameras = np.tile(np.eye(4, dtype=np.float32), (1, len(motion.mounts), 1, 1))
        return {contract.PREV_SENSOR2EGO: cameras, contract.HISTORY: history, **zero_state}
    return {contract.PREV_SENSOR2EGO: step.previous.motion.cameras_in_ego_of(motion),
            contract.HISTORY: history, **step.previous.state}
