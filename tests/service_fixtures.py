"""Helpers of the gateway tests: a small contract-conforming ONNX model, a model repository, images,
a nuScenes-like calibration, and the model inputs a frame should give: computed independently of the
gateway's preprocessing (`expected_inputs`, `reference_pipeline_inputs`) or with it (`gateway_inputs`)."""

import asyncio
import io
import json
import math
import struct
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from occupancy import model_contract as contract
from occupancy.calibration import parse_calibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.classes import CLASS_NAMES
from occupancy.geometry import matrix_to_quaternion
from occupancy.grid import OCC3D_GRID
from occupancy.model_repository import Runtime
from occupancy.preprocess import apply_transform, decode_image, decode_scale, test_time_transform
from service.core.config import Settings
from service.main import create_app
from training.publish import Artifact, publish

# Roughly one voxel in 30 is occupied: sparse answers stay small.
_PATTERN_PERIOD = 17 * 32


# The state of the temporal test model: small, each camera's per-frame value repeated.
TEST_STATE = (contract.StateTensor(contract.STATE_STEREO, (6, 4)),
              contract.StateTensor(contract.STATE_REDUCED, (6, 4)),
              contract.StateTensor(contract.STATE_COST, (6, 2)))


def build_test_model(input_size: tuple[int, int], temporal: bool = False, config: str = "test-fake") -> bytes:
    """A contract-conforming ONNX model whose grid is a deterministic function of every input.

    t = sum over cameras c of (c + 1) * p_c, p_c = 10 * mean(image_c * pattern) + 1e-3 * sum(K_c) +
    sum(sensor2ego_c) + 10 * sum(post_rot_c) + sum(post_tran_c); semantics[x, y, z] = min(|floor(t) + x + 3y
    + 7z| mod 544, 17) as uint8. `pattern` (3 x H x W, see `pixel_pattern`) weighs every channel, row and
    column differently, so swapped channels, a shifted crop or a changed matrix move the whole grid.

    Temporal: t gets 7 * history + sum(state_stereo) + 0.01 * sum(prev_sensor2ego) added, and the state it
    returns is each camera's p_c, repeated (TEST_STATE): a frame's grid depends on its past frame and history.
    """
    height, width = input_size
    x_size, y_size, z_size = OCC3D_GRID.shape
    f32 = TensorProto.FLOAT

    def const(name, values, dtype=np.float32):
        return helper.make_tensor(name, f32 if dtype == np.float32 else TensorProto.INT64,
                                  np.shape(values), np.asarray(values, dtype).ravel().tolist())

    inputs = [
        helper.make_tensor_value_info(contract.IMAGES, TensorProto.UINT8, ["B", 6, 3, height, width]),
        helper.make_tensor_value_info(contract.INTRINSICS, f32, ["B", 6, 3, 3]),
        helper.make_tensor_value_info(contract.SENSOR2EGO, f32, ["B", 6, 4, 4]),
        helper.make_tensor_value_info(contract.POST_ROTS, f32, ["B", 6, 3, 3]),
        helper.make_tensor_value_info(contract.POST_TRANS, f32, ["B", 6, 3]),
    ]
    output = helper.make_tensor_value_info(contract.SEMANTICS, TensorProto.UINT8,
                                           ["B", x_size, y_size, z_size])
    initializers = [
        const("axes23", [2, 3], np.int64), const("axes2", [2], np.int64), const("axes1", [1], np.int64),
        const("k_scale", 1e-3), const("r_scale", 10.0), const("period", float(_PATTERN_PERIOD)),
        const("free", float(CLASS_NAMES.index("free"))),
        const("weights", np.arange(1, 7)), const("shape4", [-1, 1, 1, 1], np.int64),
        const("pattern", pixel_pattern(input_size)), const("pattern_scale", 10.0),
        const("px", np.arange(x_size).reshape(x_size, 1, 1)),
        const("py", 3 * np.arange(y_size).reshape(1, y_size, 1)),
        const("pz", 7 * np.arange(z_size).reshape(1, 1, z_size)),
    ]
    nodes = [
        helper.make_node("Cast", [contract.IMAGES], ["img"], to=f32),
        helper.make_node("Mul", ["img", "pattern"], ["weighted_pixels"]),
        helper.make_node("ReduceMean", ["weighted_pixels"], ["pattern_mean"], axes=[2, 3, 4], keepdims=0),
        helper.make_node("Mul", ["pattern_mean", "pattern_scale"], ["mean"]),
        helper.make_node("ReduceSum", [contract.INTRINSICS, "axes23"], ["k_sum"], keepdims=0),
        helper.make_node("ReduceSum", [contract.SENSOR2EGO, "axes23"], ["e_sum"], keepdims=0),
        helper.make_node("ReduceSum", [contract.POST_ROTS, "axes23"], ["r_sum"], keepdims=0),
        helper.make_node("ReduceSum", [contract.POST_TRANS, "axes2"], ["t_sum"], keepdims=0),
        helper.make_node("Mul", ["k_sum", "k_scale"], ["k_term"]),
        helper.make_node("Mul", ["r_sum", "r_scale"], ["r_term"]),
        helper.make_node("Sum", ["mean", "k_term", "e_sum", "r_term", "t_sum"], ["per_camera"]),
        helper.make_node("Mul", ["per_camera", "weights"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axes1"], ["total"], keepdims=0),
        helper.make_node("Floor", ["total"], ["floor"]),
        helper.make_node("Reshape", ["floor", "shape4"], ["floor4"]),
        helper.make_node("Sum", ["floor4", "px", "py", "pz"], ["value"]),
        helper.make_node("Abs", ["value"], ["absolute"]),
        helper.make_node("Mod", ["absolute", "period"], ["phase"], fmod=1),
        helper.make_node("Min", ["phase", "free"], ["label"]),
        helper.make_node("Cast", ["label"], [contract.SEMANTICS], to=TensorProto.UINT8),
    ]
    outputs = [output]
    if temporal:
        _add_temporal(nodes, inputs, outputs, initializers, const)
    graph = helper.make_graph(nodes, "fake_occupancy", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, test_metadata(input_size, temporal, config).to_props())
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _add_temporal(nodes: list, inputs: list, outputs: list, initializers: list, const) -> None:
    """The temporal test model's inputs, outputs and arithmetic (see build_test_model)."""
    f32 = TensorProto.FLOAT
    inputs += [helper.make_tensor_value_info(contract.PREV_SENSOR2EGO, f32, ["B", 6, 4, 4]),
               helper.make_tensor_value_info(contract.HISTORY, TensorProto.INT32, ["B", 1])]
    inputs += [helper.make_tensor_value_info(t.name, f32, ["B", *t.shape]) for t in TEST_STATE]
    outputs += [helper.make_tensor_value_info(t.output, f32, ["B", *t.shape]) for t in TEST_STATE]
    initializers += [const("axes12", [1, 2], np.int64), const("axes123", [1, 2, 3], np.int64),
                     const("seven", 7.0), const("hundredth", 0.01)]
    initializers += [const(f"ones_{t.name}", np.full((1, 1, t.shape[1]), index + 1.0))
                     for index, t in enumerate(TEST_STATE)]
    (at,) = [index for index, node in enumerate(nodes) if node.output == ["total"]]
    nodes[at].output[0] = "frame_total"
    nodes[at + 1:at + 1] = [
        helper.make_node("Cast", [contract.HISTORY], ["history_f"], to=f32),
        helper.make_node("ReduceSum", ["history_f", "axes1"], ["history_sum"], keepdims=0),
        helper.make_node("Mul", ["history_sum", "seven"], ["history_term"]),
        helper.make_node("ReduceSum", [contract.STATE_STEREO, "axes12"], ["state_term"], keepdims=0),
        helper.make_node("ReduceSum", [contract.PREV_SENSOR2EGO, "axes123"], ["prev_sum"], keepdims=0),
        helper.make_node("Mul", ["prev_sum", "hundredth"], ["prev_term"]),
        helper.make_node("Sum", ["frame_total", "history_term", "state_term", "prev_term"], ["total"]),
    ]
    nodes.append(helper.make_node("Unsqueeze", ["per_camera", "axes2"], ["per_camera_3d"]))
    nodes += [helper.make_node("Mul", ["per_camera_3d", f"ones_{t.name}"], [t.output]) for t in TEST_STATE]


def pixel_pattern(input_size: tuple[int, int]) -> np.ndarray:
    """3 x H x W weights in [-1, 1] that differ by channel, row and column (`build_test_model`)."""
    channel, row, column = np.meshgrid(np.arange(3), np.arange(input_size[0]), np.arange(input_size[1]),
                                       indexing="ij")
    return np.cos(0.37 * row + 0.23 * column + 2.1 * channel).astype(np.float32)


def test_metadata(input_size: tuple[int, int], temporal: bool = False, config: str = "test-fake",
                  ) -> contract.ModelMetadata:
    """The occ.* metadata of a test model over the Occ3D grid."""
    grid = OCC3D_GRID
    extra = {"state": TEST_STATE, "frame_gap_s": 0.5, "test_path": contract.TEST_PATHS[0]} if temporal else {}
    return contract.ModelMetadata(config=config, input_size=tuple(input_size), grid_shape=grid.shape,
                                  range_m=tuple(grid.range_m), voxel_size_m=(grid.voxel_size,) * 3,
                                  classes=tuple(CLASS_NAMES), temporal=temporal, **extra)


test_metadata.__test__ = False  # a helper, not a test


def write_python_model(repository: Path, name: str, onnx_path: Path, *, max_batch_size: int = 8,
                       max_queue_delay_us: int = 2000) -> Path:
    """Publish `onnx_path` as the next version of a python-backend model (what the bundled CPU Triton
    serves); returns the model folder."""
    publish(repository, name, Artifact(onnx_path), runtime=Runtime.PYTHON, max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us)
    return repository / name


def write_model(root: Path, name: str, versions: tuple[int, ...], model: bytes) -> Path:
    """A Triton-layout model folder: config.pbtxt and <version>/model.onnx for every version."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n')
    for version in versions:
        (folder / str(version)).mkdir()
        (folder / str(version) / "model.onnx").write_bytes(model)
    return folder


def camera_image(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth BGR uint8 image (H, W, 3): gradients and blobs that survive JPEG and downscaling."""
    height, width = size
    v, u = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0, 2 * math.pi, size=3)
    channels = [127 + 100 * np.sin(6 * u + 4 * v * (c + 1) + phases[c]) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode(image: np.ndarray, extension: str = ".jpg", *params: int) -> bytes:
    ok, buffer = cv2.imencode(extension, image, list(params))
    assert ok
    return buffer.tobytes()


def frame_images(size: tuple[int, int], extension: str = ".jpg") -> dict[str, bytes]:
    return {name: encode(camera_image(size, seed), extension) for seed, name in enumerate(CAMERA_NAMES)}


def calibration(source_size: tuple[int, int] = (900, 1600), temporal: bool = False) -> dict:
    """A nuScenes-like calibration in the API's JSON form; cameras yawed 60 degrees apart."""
    height, width = source_size
    cameras = {}
    for index, name in enumerate(CAMERA_NAMES):
        yaw = math.radians([55, 0, -55, 110, 180, -110][index])
        forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        rotation = np.stack((right, np.cross(forward, right), forward), axis=1)  # camera -> ego axes
        focal = 1266.4 * width / 1600
        cameras[name] = {
            "intrinsic": [[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]],
            "sensor2ego": {"translation": [1.5 * math.cos(yaw), 0.5 * math.sin(yaw), 1.5],
                           "rotation": matrix_to_quaternion(rotation).tolist()},
        }
    frame = {"cameras": cameras}
    if temporal:
        frame |= {"ego2global": {"translation": [600.1, 1647.5, 0.0], "rotation": [0.57, 0.0, 0.0, 0.82]},
                  "timestamp": 1533151603547590, "sequence_id": "scene-0103"}
    return frame


# The answer tests' frame: each camera its own size and format, chosen so that the gateway's fast path is
# arithmetic that `expected_inputs` can write out: camera -> (downscale factor k, rows cropped, format).
# k is 1 (no resampling; a JPEG is decoded whole) or 2 (a PNG: a 2 x 2 box mean, as OpenCV's area resize
# makes it); the crop keeps the bottom rows, as the reference's test-time transform does.
EXACT_CAMERAS: dict[str, tuple[int, int, str]] = {
    "CAM_FRONT_LEFT": (2, 8, ".png"), "CAM_FRONT": (1, 16, ".jpg"), "CAM_FRONT_RIGHT": (2, 13, ".png"),
    "CAM_BACK_LEFT": (1, 4, ".jpg"), "CAM_BACK": (2, 0, ".png"), "CAM_BACK_RIGHT": (1, 9, ".png"),
}


def exact_frame_images(input_size: tuple[int, int]) -> dict[str, bytes]:
    """Six images of EXACT_CAMERAS' sizes and formats for a model of `input_size` (H, W)."""
    height, width = input_size
    return {name: encode(camera_image((factor * (height + rows), factor * width), seed), extension)
            for seed, (name, (factor, rows, extension)) in enumerate(EXACT_CAMERAS.items())}


def expected_inputs(
    images: dict[str, bytes], frame: dict, input_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """The model inputs of a frame of `exact_frame_images`, computed without the gateway's preprocessing:
    a whole OpenCV decode (B, G, R, the networks' order), a k-times downscale as the rounded mean of each
    k x k block, the bottom `input_size` rows; post_rot = diag(1/k, 1/k, 1), post_tran = (0, -rows dropped,
    0). The calibration tensors are the parsed JSON's."""
    height, width = input_size
    pixels, post_rots, post_trans = [], [], []
    for name in CAMERA_NAMES:
        decoded = cv2.imdecode(np.frombuffer(images[name], np.uint8), cv2.IMREAD_COLOR).astype(np.int64)
        factor = decoded.shape[1] // width
        rows = decoded.shape[0] // factor  # after the downscale
        assert factor in (1, 2) and decoded.shape[:2] == (factor * rows, factor * width), decoded.shape
        blocks = decoded.reshape(rows, factor, width, factor, 3).sum(axis=(1, 3))
        resized = (blocks + factor * factor // 2) // (factor * factor)
        pixels.append(resized[rows - height:].transpose(2, 0, 1).astype(np.uint8))
        post_rots.append(np.diag([1.0 / factor, 1.0 / factor, 1.0]))
        post_trans.append([0.0, float(height - rows), 0.0])
    return _inputs(pixels, post_rots, post_trans, frame)


def reference_camera_input(data: bytes, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray,
                                                                               np.ndarray]:
    """One camera through the reference's test-time `PrepareImageInputs`, literally, with Pillow: PIL opens
    it (R, G, B), resizes it to the input width with its default filter, crops the bottom rows (crop_h =
    (0, 0)) and centres it horizontally. The H x W x 3 R, G, B image, post_rot and post_tran."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    width, height = image.size
    input_height, input_width = input_size
    resize = float(input_width) / float(width)
    resize_dims = (int(width * resize), int(height * resize))
    new_width, new_height = resize_dims
    crop_h = int((1 - 0.0) * new_height) - input_height
    crop_w = int(max(0, new_width - input_width) / 2)
    image = image.resize(resize_dims).crop((crop_w, crop_h, crop_w + input_width, crop_h + input_height))
    return np.array(image), np.diag([resize, resize, 1.0]), np.array([-crop_w, -crop_h, 0.0])


def reference_pipeline_inputs(
    images: dict[str, bytes], frame: dict, input_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """The model inputs of the reference pipeline (`reference_camera_input`), channels swapped to B, G, R
    as mmcv's to_rgb does it; the calibration tensors are the parsed JSON's."""
    cameras = [reference_camera_input(images[name], input_size) for name in CAMERA_NAMES]
    pixels = [rgb[..., ::-1].transpose(2, 0, 1) for rgb, _, _ in cameras]
    return _inputs(pixels, [rot for _, rot, _ in cameras], [tran for _, _, tran in cameras], frame)


def _inputs(pixels: list, post_rots: list, post_trans: list, frame: dict) -> dict[str, np.ndarray]:
    parsed = parse_calibration(frame)
    return {contract.IMAGES: np.ascontiguousarray(np.stack(pixels)[None], dtype=np.uint8),
            contract.INTRINSICS: parsed.intrinsics_array()[None],
            contract.SENSOR2EGO: parsed.sensor2ego_array()[None],
            contract.POST_ROTS: np.asarray(post_rots, np.float32)[None],
            contract.POST_TRANS: np.asarray(post_trans, np.float32)[None]}


def gateway_inputs(
    images: dict[str, bytes], frame: dict, input_size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """The model inputs of a frame, made with the occupancy preprocessing functions the gateway uses: for
    tests of what comes after the preprocessing (backends, clients), not of the preprocessing itself
    (`expected_inputs` and `reference_pipeline_inputs` are computed without it)."""
    pixels, post_rots, post_trans = [], [], []
    for name in CAMERA_NAMES:
        data = images[name]
        source_size = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        transform = test_time_transform(source_size, input_size)
        scale = decode_scale(transform) if data[:2] == b"\xff\xd8" else 1.0
        image = apply_transform(decode_image(data, scale), transform, scale)  # B, G, R as decoded
        pixels.append(image.transpose(2, 0, 1))
        post_rots.append(transform.post_rot)
        post_trans.append(transform.post_tran)
    return _inputs(pixels, post_rots, post_trans, frame)


def run_model(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """semantics [X, Y, Z] of one frame, from onnxruntime directly."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([contract.SEMANTICS], inputs)[0][0]


def multipart_files(images: dict[str, bytes], frame: dict) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx `files=` of the primary request form."""
    files = [(name, (f"{name}.jpg", data, "image/jpeg")) for name, data in images.items()]
    return [*files, ("calibration", ("calibration.json", json.dumps(frame).encode(), "application/json"))]


def post_frame(client, images: dict[str, bytes], frame: dict, **kwargs):
    """POST /predict of a frame in the multipart form, with a sync or an async httpx client."""
    return client.post("/predict", files=multipart_files(images, frame), **kwargs)


class GatedBackend:
    """A real backend whose inferences wait until `gate` (a threading.Event) is open: a test decides when a
    frame holding a slot ends, instead of a sleep. `entered` is set once an inference waits at the gate."""

    def __init__(self, inner, gate: threading.Event):
        self.inner, self.gate, self.kind, self.models = inner, gate, inner.kind, inner.models
        self.entered = threading.Event()

    async def infer(self, model, inputs):
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, GATE_TIMEOUT_S)
        return await self.inner.infer(model, inputs)

    async def ready(self):
        return await self.inner.ready()

    async def close(self):
        await self.inner.close()


GATE_TIMEOUT_S = 60.0  # a gate a test forgot to open ends the wait rather than hanging the suite


def changed(settings: Settings, **changes) -> Settings:
    return Settings(**{**settings.model_dump(), **changes})


@asynccontextmanager
async def serving(settings: Settings, build_backend=None):
    """An httpx client of the app in this event loop (ASGI, no socket), lifespan run."""
    app = create_app(settings, build_backend)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            yield client


def jpeg_with_a_fake_frame(jpeg: bytes) -> bytes:
    """`jpeg` with a decoy 8 x 8 start-of-frame that only a marker walk treating stuffed bytes as a marker
    finds: after SOI, FF 00 (stuffing, not a marker) followed by what such a walk reads as a length of 6,
    which lands it inside a comment (FF FE) that holds the decoy. libjpeg skips the stuffing, the two
    stray bytes and the whole comment, and decodes the real frame behind it."""
    decoy = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 8, 8, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    comment = b"\xff\xfe" + struct.pack(">H", 2 + len(decoy)) + decoy
    return jpeg[:2] + b"\xff\x00" + struct.pack(">H", 6) + comment + jpeg[2:]


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """`jpeg` with an APP1 Exif segment whose only tag is Orientation (0x0112) = `orientation`."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)  # tag, SHORT, count 1, value (padded)
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(payload)) + payload + jpeg[2:]
