"""The gateway's sequences of temporal models (docs/API.md "Temporal models"): state carried from frame to
frame, each reset rule, the trained-gap rule, eviction and TTL, order under concurrent posts, DELETE, the
headers and metrics, and the memory 1,000 sequences hold against the bound logged at start-up."""

import asyncio
import dataclasses
import logging
import tracemalloc

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixtures import (
    TEST_STATE,
    build_test_model,
    calibration,
    frame_images,
    gateway_inputs,
    post_frame,
    test_metadata,
    write_model,
)

from occupancy import model_contract as contract
from occupancy.calibration import Pose
from occupancy.encoding import NPY_MEDIA_TYPE, decode_dense, decode_npy
from occupancy.sequence import SEQUENCE_HEADER, SequenceRules
from service.backends.base import ServedModel
from service.backends.embedded import EmbeddedBackend
from service.core.config import Settings
from service.core.metrics import Metrics
from service.core.sequences import SequenceLimits, SequenceStore
from service.main import create_app

INPUT_SIZE = (32, 64)
SOURCE_SIZE = (90, 160)
MODEL = "fake-temporal"
START_US = 1533151603547590


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, MODEL, (1,), build_test_model(INPUT_SIZE, temporal=True))
    return root


@pytest.fixture(scope="module")
def settings(repository):
    return Settings(model_repository=repository, default_model=MODEL, watch_interval_s=0)


@pytest.fixture(scope="module")
def images():
    return frame_images(SOURCE_SIZE)


def frame(seconds: float, x_m: float | None = None, sequence: str = "drive-1", focal_scale: float = 1.0,
          ) -> dict:
    """The calibration of a frame `seconds` into a drive at 4 m/s (or with the ego at `x_m`)."""
    calib = calibration(SOURCE_SIZE, temporal=True)
    calib["timestamp"] = START_US + round(seconds * 1e6)
    calib["sequence_id"] = sequence
    calib["ego2global"]["translation"][0] = 600.0 + (4.0 * seconds if x_m is None else x_m)
    for camera in calib["cameras"].values():
        camera["intrinsic"][0][0] *= focal_scale
    return calib


def sequence_of(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()["sequence"]


def grid_of(response) -> np.ndarray:
    return decode_dense(response.json()["occupancy"]["data"])


def test_each_frame_carries_the_state_of_the_one_before(settings, repository, images):
    """The grids are the model's on the state chained by hand, with t-1's cameras in t's ego composed
    independently of the gateway; a cold start of the third frame gives another grid."""
    frames = [frame(0.5 * k) for k in range(3)]
    with TestClient(create_app(settings)) as client:
        responses = [post_frame(client, images, calib) for calib in frames]
        cold = post_frame(client, images, frame(1.0, sequence="drive-2"))
    path = repository / MODEL / "1" / "model.onnx"
    state = contract.zero_state(TEST_STATE)
    previous = None
    for k, (calib, response) in enumerate(zip(frames, responses, strict=True)):
        inputs = gateway_inputs(images, calib, INPUT_SIZE)
        key = Pose(**calib["ego2global"]).matrix()
        cameras = inputs[contract.SENSOR2EGO][0] if previous is None else (
            np.linalg.inv(key) @ previous @ np.stack([Pose(**c["sensor2ego"]).matrix()
                                                      for c in calib["cameras"].values()]))
        inputs |= {contract.PREV_SENSOR2EGO: cameras[None].astype(np.float32),
                   contract.HISTORY: np.array([[min(k, 2)]], np.int32), **state}
        outputs = run_model_outputs(path, inputs)
        np.testing.assert_array_equal(grid_of(response), outputs[0][0], err_msg=f"frame {k}")
        state = {tensor.name: value for tensor, value in zip(TEST_STATE, outputs[1:], strict=True)}
        previous = key
        assert sequence_of(response) == {"id": "drive-1", "frame_index": k, "history": min(k, 2),
                                         "reset": None, "gap_s": None if k == 0 else 0.5}
    assert sequence_of(cold)["history"] == 0
    assert (grid_of(cold) != grid_of(responses[2])).any()


def run_model_outputs(path, inputs) -> list[np.ndarray]:
    """semantics, then the state outputs, of the model at `path` on `inputs`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([contract.SEMANTICS, *(tensor.output for tensor in TEST_STATE)], inputs)


@pytest.mark.parametrize(("second", "reason"), [
    (frame(0.0), "timestamp_backwards"),
    (frame(-0.5), "timestamp_backwards"),
    (frame(1.5), "timestamp_gap"),
    (frame(0.5, x_m=30.0), "pose_jump"),
    (frame(0.5, focal_scale=1.1), "calibration"),
])
def test_each_reset_is_a_cold_start_that_says_why(settings, images, second, reason):
    with TestClient(create_app(settings)) as client:
        post_frame(client, images, frame(0.0))
        reset = sequence_of(post_frame(client, images, second))
        metrics = client.get("/metrics").text
    assert (reset["history"], reset["reset"], reset["frame_index"], reset["gap_s"]) == (0, reason, 1, None)
    assert f'occ_sequence_resets_total{{backend="embedded",reason="{reason}"}} 1.0' in metrics


def test_a_12_hz_client_is_given_the_frame_nearest_half_a_second_back(settings, images):
    with TestClient(create_app(settings)) as client:
        sequences = [sequence_of(post_frame(client, images, frame(k / 12))) for k in range(13)]
    # The first quarter second has no frame old enough; those frames' successors have one real past frame.
    assert [s["history"] for s in sequences] == [0] * 3 + [1] * 7 + [2] * 3
    assert [s["gap_s"] for s in sequences[:4]] == [None, None, None, 0.25]
    assert sequences[6]["gap_s"] == 0.5 and all(abs(s["gap_s"] - 0.5) <= 1 / 12 + 1e-5 for s in sequences[8:])
    assert all(s["reset"] is None for s in sequences)


def test_the_least_recently_used_sequence_is_evicted_and_comes_back_cold(settings, images):
    with TestClient(create_app(_with(settings, max_sequences=2))) as client:
        def post(sequence: str, seconds: float) -> dict:
            return sequence_of(post_frame(client, images, frame(seconds, sequence=sequence)))

        post("a", 0.0), post("b", 0.0), post("a", 0.5)  # a is the most recently used
        post("c", 0.0)  # b goes
        assert post("a", 1.0)["history"] == 2
        back = post("b", 0.5)
        metrics = client.get("/metrics").text
    assert (back["history"], back["reset"], back["frame_index"]) == (0, "evicted", 0)
    assert 'occ_sequence_evictions_total{backend="embedded",reason="lru"} 2.0' in metrics  # b, then c
    assert 'occ_sequence_resets_total{backend="embedded",reason="evicted"} 1.0' in metrics
    assert 'occ_sequences_active{backend="embedded"} 2.0' in metrics


def _with(settings: Settings, **changes) -> Settings:
    return Settings(**{**settings.model_dump(), **changes})


def test_delete_ends_a_sequence(settings, images):
    with TestClient(create_app(settings)) as client:
        post_frame(client, images, frame(0.0, sequence="ends"))
        post_frame(client, images, frame(0.5, sequence="ends"))
        assert client.delete("/v1/sequences/ends").status_code == 204
        missing = client.delete("/v1/sequences/ends")
        again = sequence_of(post_frame(client, images, frame(1.0, sequence="ends")))
    assert missing.status_code == 404 and "ends" in missing.json()["detail"]
    assert (again["history"], again["frame_index"], again["reset"]) == (0, 0, None)


def test_the_sequence_header_must_match_and_a_npy_answer_carries_the_sequence(settings, images):
    with TestClient(create_app(settings)) as client:
        wrong = post_frame(client, images, frame(0.0), headers={SEQUENCE_HEADER: "another"})
        first = post_frame(client, images, frame(0.0), headers={SEQUENCE_HEADER: "drive-1"})
        npy = post_frame(client, images, frame(0.5), headers={"Accept": NPY_MEDIA_TYPE})
    assert wrong.status_code == 422 and SEQUENCE_HEADER in wrong.json()["detail"]
    assert first.status_code == 200
    assert {name: npy.headers.get(name) for name in (SEQUENCE_HEADER, "X-Sequence-Frame-Index",
                                                      "X-Sequence-History", "X-Sequence-Reset")} == {
        SEQUENCE_HEADER: "drive-1", "X-Sequence-Frame-Index": "1", "X-Sequence-History": "1",
        "X-Sequence-Reset": None}
    assert decode_npy(npy.content, (200, 200, 16)).dtype == np.uint8


def test_sequence_ids_that_cannot_travel_in_a_header_are_422(settings, images):
    with TestClient(create_app(settings)) as client:
        spaced = post_frame(client, images, frame(0.0, sequence="a b"))
        long = post_frame(client, images, frame(0.0, sequence="x" * 129))
    assert spaced.status_code == 422 and "sequence_id" in spaced.json()["detail"]
    assert long.status_code == 422


class FirstHeld:
    """A backend whose first inference waits for `release`; records each inference's history as it ends."""

    def __init__(self, backend: EmbeddedBackend):
        self._backend, self.calls, self.ended = backend, 0, []
        self.release, self.holding = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name):
        return getattr(self._backend, name)

    async def infer(self, model, inputs):
        self.calls += 1
        if self.calls == 1:
            self.holding.set()
            await self.release.wait()
        answer = await self._backend.infer(model, inputs)
        self.ended.append(int(inputs[contract.HISTORY][0, 0]))
        return answer


def test_frames_of_one_sequence_posted_at_once_run_in_timestamp_order(settings, images):
    """Frame 0 of a sequence is held in inference; frames 4, 2, 1, 3 are posted at once behind it and run
    1, 2, 3, 4 with the answers of a sequential run; another sequence is answered meanwhile."""
    two_slots = _with(settings, max_concurrent=2)
    with TestClient(create_app(two_slots)) as client:
        sequential = [post_frame(client, images, frame(0.5 * k, sequence="ordered")) for k in range(5)]
    held: list[FirstHeld] = []
    app = create_app(two_slots, lambda s: held.append(FirstHeld(EmbeddedBackend.load(s))) or held[0])

    async def scenario():
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=60) as client:
            backend, store = held[0], app.state.occ.sequences
            first = asyncio.create_task(post_frame(client, images, frame(0.0, sequence="ordered")))
            await backend.holding.wait()
            later = {k: asyncio.create_task(post_frame(client, images, frame(0.5 * k, sequence="ordered")))
                     for k in (4, 2, 1, 3)}
            other = await post_frame(client, images, frame(0.0, sequence="other"))  # while frame 0 is held
            while store.waiting(MODEL, "ordered") < 4:
                await asyncio.sleep(0)  # a yield to the loop until all four wait, not a wait for time
            backend.release.set()
            return [await first] + [await later[k] for k in (1, 2, 3, 4)], other, backend.ended

    answers, other, ended = asyncio.run(scenario())
    assert sequence_of(other)["history"] == 0
    assert ended == [0, 0, 1, 2, 2, 2]  # the other sequence's frame ended first, then 0, 1, 2, 3, 4
    for k, (answer, want) in enumerate(zip(answers, sequential, strict=True)):
        assert sequence_of(answer) == sequence_of(want), k
        np.testing.assert_array_equal(grid_of(answer), grid_of(want), err_msg=f"frame {k}")


def test_metrics_count_the_sequences_their_state_and_their_frames(settings, images):
    with TestClient(create_app(settings)) as client:
        for seconds in (0.0, 0.5, 1.0):
            post_frame(client, images, frame(seconds, sequence="counted"))
        metrics = client.get("/metrics").text
    state_bytes = test_metadata(INPUT_SIZE, temporal=True).state_bytes
    assert 'occ_sequences_active{backend="embedded"} 1.0' in metrics
    # 2 Hz keeps the last two frames' states.
    assert f'occ_sequence_state_bytes{{backend="embedded"}} {2.0 * state_bytes}' in metrics
    for history in (0, 1, 2):
        assert f'occ_sequence_frames_total{{backend="embedded",history="{history}"}} 1.0' in metrics


# --- the store -------------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def served_model(state: tuple[contract.StateTensor, ...] | None = None, version: str = "1") -> ServedModel:
    metadata = test_metadata(INPUT_SIZE, temporal=True)
    if state is not None:
        metadata = dataclasses.replace(metadata, state=state)
    fields = {field.name: getattr(metadata, field.name) for field in dataclasses.fields(metadata)}
    return ServedModel(**fields, name=MODEL, version=version, versions=(version,))


def store_of(max_sequences: int = 4, ttl_s: float = 60.0, clock=None) -> tuple[SequenceStore, Metrics]:
    metrics = Metrics("embedded")
    limits = SequenceLimits(max_sequences, ttl_s, SequenceRules(), max_waiting=8)
    return SequenceStore(limits, metrics, clock or Clock()), metrics


def motion_at(seconds: float):
    from test_occupancy_sequence import motion

    return motion(seconds)


def run_frame(store: SequenceStore, model: ServedModel, sequence: str, seconds: float):
    """A frame through the store as the predict route does it; its state is filled with its time."""
    step = store.begin(model, sequence, motion_at(seconds))
    step.keep({tensor.name: np.full((1, *tensor.shape), seconds, tensor.dtype) for tensor in model.state})
    return step.info


def test_an_idle_sequence_expires_after_the_ttl():
    clock = Clock()
    store, metrics = store_of(ttl_s=10.0, clock=clock)
    model = served_model()
    run_frame(store, model, "idle", 0.0)
    run_frame(store, model, "busy", 0.0)
    clock.now = 8.0
    run_frame(store, model, "busy", 0.5)
    clock.now = 10.5
    store.sweep()
    assert len(store) == 1  # idle went, busy was used 2.5 s ago
    back = run_frame(store, model, "idle", 0.5)
    assert (back.history, back.reset) == (0, "expired")
    assert metrics.sequence_evictions.labels(backend="embedded", reason="ttl")._value.get() == 1


def test_another_model_version_starts_the_sequence_over():
    store, _ = store_of()
    run_frame(store, served_model(version="1"), "drive", 0.0)
    swapped = run_frame(store, served_model(version="2"), "drive", 0.5)
    assert (swapped.history, swapped.reset, swapped.frame_index) == (0, "model_version", 1)


def test_a_frame_deleted_while_it_ran_does_not_bring_its_sequence_back():
    store, _ = store_of()
    model = served_model()
    step = store.begin(model, "gone", motion_at(0.0))
    assert store.forget("gone") == 1
    step.keep({tensor.name: np.zeros((1, *tensor.shape), tensor.dtype) for tensor in model.state})
    assert len(store) == 0 and store.nbytes == 0


def test_1000_sequences_hold_no_more_than_the_logged_bound(caplog):
    """1,000 sequences at once, three 2 Hz frames each, of a model with an 18 KiB state: the memory the
    store holds (traced allocations, numpy's included) is within `bound_bytes`, and that is what the
    gateway logs at start-up."""
    state = tuple(contract.StateTensor(name, (6, 16, 16)) for name in contract.STATE_NAMES)
    model = served_model(state)
    store, _ = store_of(max_sequences=1000)
    bound = store.bound_bytes([model])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for seconds in (0.0, 0.5, 1.0):
            for number in range(1000):
                run_frame(store, model, f"drive-{number}", seconds)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == 1000 and store.nbytes == 1000 * 2 * model.state_bytes
    assert store.nbytes < held <= bound, (held, bound)
    with caplog.at_level(logging.INFO, logger="service"):
        from service.main import _log_sequence_bound

        _log_sequence_bound(store, [model], Settings(max_sequences=1000))
    assert f"= {bound / 2**20:.1f} MiB" in caplog.text


def test_turns_go_to_the_earliest_waiting_frame_and_a_timeout_leaves_the_queue():
    async def scenario():
        store, _ = store_of()
        order = []
        loop = asyncio.get_running_loop()
        forever = loop.time() + 60

        async def frame_at(timestamp: int, deadline: float = forever):
            async with store.turn(MODEL, "s", timestamp, deadline):
                order.append(timestamp)

        async with store.turn(MODEL, "s", 0, forever):
            waiting = [asyncio.create_task(frame_at(t)) for t in (30, 10, 20)]
            late = asyncio.create_task(frame_at(5, loop.time()))  # its deadline has passed
            while store.waiting(MODEL, "s") < 3 or not late.done():
                await asyncio.sleep(0)
        await asyncio.gather(*waiting)
        with pytest.raises(TimeoutError):
            await late
        return order, store.waiting(MODEL, "s")

    assert asyncio.run(scenario()) == ([10, 20, 30], 0)
