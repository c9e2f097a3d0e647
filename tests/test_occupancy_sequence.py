"""occupancy.sequence: which past frame a frame uses, the resets, and what a sequence keeps."""

import math

import numpy as np
import pytest

from occupancy import model_contract as contract
from occupancy.sequence import (
    FrameMotion,
    PastFrame,
    Reset,
    SequenceHistory,
    SequenceRules,
    model_inputs,
)

US = 1_000_000
MOUNTS = np.stack([np.eye(4)] * 6)
for _index in range(6):
    MOUNTS[_index, :3, 3] = (1.0, 0.1 * _index, 1.5)


def motion(seconds: float, x_m: float | None = None, focal: float = 1266.0, yaw: float = 0.0) -> FrameMotion:
    """A frame at `seconds`, the ego at x = `x_m` (default: 10 m/s), every camera with that ego pose."""
    pose = np.eye(4)
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:3, 3] = (600.0 + (10.0 * seconds if x_m is None else x_m), 1600.0, 0.0)
    intrinsics = np.tile([[focal, 0, 800], [0, focal, 450], [0, 0, 1.0]], (6, 1, 1))
    return FrameMotion.of(round(seconds * US), MOUNTS, np.stack([pose] * 6), intrinsics,
                          np.tile(np.eye(3), (6, 1, 1)), np.zeros((6, 3)))


def run(history: SequenceHistory, frame: FrameMotion):
    """`step` and `keep` as a host runs a frame; the state is the frame's time, to see which one was used."""
    step = history.step(frame)
    history.keep(PastFrame(frame, step.history, {"t": np.array([frame.timestamp_us])}))
    return step


def used(step) -> float | None:
    return None if step.previous is None else step.previous.motion.timestamp_us / US


def test_keyframes_at_2_hz_use_the_frame_before_and_keep_two():
    history = SequenceHistory(SequenceRules())
    steps = [run(history, motion(0.5 * k)) for k in range(5)]
    assert [step.history for step in steps] == [0, 1, 2, 2, 2]
    assert [used(step) for step in steps] == [None, 0.0, 0.5, 1.0, 1.5]
    assert all(step.reset is None for step in steps)
    assert [frame.motion.timestamp_us / US for frame in history.frames] == [1.5, 2.0]


def test_a_12_hz_client_gets_the_frame_nearest_half_a_second_back():
    history = SequenceHistory(SequenceRules())
    interval = 1 / 12
    gaps = []
    for k in range(30):
        step = run(history, motion(k * interval))
        gaps.append(step.gap_s(motion(k * interval)))
        assert len(history.frames) <= history.rules.max_frames
    assert gaps[:3] == [None, None, None]  # 0, 83 and 167 ms: nothing at least 0.25 s old yet
    assert all(0.25 <= gap <= 1.0 for gap in gaps[3:])
    # Kept frames are at least 0.5 / 3 s apart (every third one here): from 2/3 s on the frame used is
    # within one frame interval of 0.5 s.
    assert all(abs(gap - 0.5) <= interval + 1e-5 for gap in gaps[8:]), gaps
    assert max(abs(gap - 0.5) for gap in gaps[8:]) > 0.05  # not every frame is 6 back: some are 5 or 7


def test_a_1_hz_client_uses_the_last_frame_and_a_slower_one_resets():
    history = SequenceHistory(SequenceRules())
    steps = [run(history, motion(1.0 * k)) for k in range(3)]
    assert [used(step) for step in steps] == [None, 0.0, 1.0]
    step = run(history, motion(3.5))
    assert (step.reset, step.history) == (Reset.TIMESTAMP_GAP, 0)


@pytest.mark.parametrize(("frame", "reset"), [
    (motion(0.5, focal=1200.0), Reset.CALIBRATION),
    (motion(0.0), Reset.TIMESTAMP_BACKWARDS),
    (motion(-0.5), Reset.TIMESTAMP_BACKWARDS),
    (motion(1.1), Reset.TIMESTAMP_GAP),
    (motion(0.5, x_m=25.0), Reset.POSE_JUMP),
])
def test_each_reset_drops_the_kept_frames(frame, reset):
    history = SequenceHistory(SequenceRules())
    run(history, motion(0.0))
    step = run(history, frame)
    assert (step.reset, step.history, step.previous) == (reset, 0, None)
    assert [kept.motion for kept in history.frames] == [frame]


def test_within_the_limits_nothing_resets():
    history = SequenceHistory(SequenceRules())
    run(history, motion(0.0))
    step = run(history, motion(1.0, x_m=19.9, yaw=0.3))  # 1 s (the max gap), 19.9 m, turning: no reset
    assert (step.reset, step.history, used(step)) == (None, 1, 0.0)


def test_a_tie_goes_to_the_newer_frame_and_a_model_gap_replaces_the_default():
    history = SequenceHistory(SequenceRules(max_frames=4))
    for seconds in (0.0, 0.4, 0.6):
        run(history, motion(seconds))
    assert used(history.step(motion(1.0))) == 0.6  # 0.6 s ago and 0.4 s ago are 0.1 s from 0.5: the newer
    rules = SequenceRules().for_model(2.0)
    assert (rules.frame_gap_s, rules.max_gap_s, rules.min_age_s) == (2.0, 2.0, 1.75)


def test_the_inputs_carry_the_past_frame_in_this_frames_ego():
    history = SequenceHistory(SequenceRules())
    zero = contract.zero_state((contract.StateTensor(contract.STATE_COST, (6, 2)),))
    first, second = motion(0.0), motion(0.5, yaw=0.1)
    cold = model_inputs(history.step(first), first, zero)
    assert cold[contract.HISTORY].tolist() == [[0]] and cold[contract.HISTORY].dtype == np.int32
    assert cold[contract.STATE_COST] is zero[contract.STATE_COST]
    history.keep(PastFrame(first, 0, {contract.STATE_COST: np.ones((1, 6, 2), np.float32)}))
    inputs = model_inputs(history.step(second), second, zero)
    assert inputs[contract.HISTORY].tolist() == [[1]]
    np.testing.assert_array_equal(inputs[contract.STATE_COST], 1.0)
    want = np.linalg.inv(second.ego2global[0]) @ first.ego2global[0] @ MOUNTS
    np.testing.assert_allclose(inputs[contract.PREV_SENSOR2EGO][0], want, atol=1e-5)
    assert inputs[contract.PREV_SENSOR2EGO].dtype == np.float32


def test_rules_refuse_what_cannot_hold():
    with pytest.raises(ValueError, match="max gap"):
        SequenceRules(frame_gap_s=0.5, max_gap_s=0.4)
    with pytest.raises(ValueError, match="kept frame"):
        SequenceRules(max_frames=0)
