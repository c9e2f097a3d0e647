"""The exported model's interface: tensor names, dtypes, and its metadata with one encode/decode pair.

The export code writes these and the gateway reads them, so both import them from here instead
of spelling the strings twice. Shapes: B frames, N = 6 cameras in CAMERA_NAMES order, H x W the
model's input size.

Temporal (BEVStereo4D) models run one frame at a time: besides the frame they take the previous frame's
cameras, how many real past frames there are, and the state the previous frame returned; they return
this frame's state for the next one. Which past frame is "previous" is the host's choice
(occupancy.sequence), and so is what happens on a reset: the graph only needs `history`.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from occupancy.errors import InputError
from occupancy.network_input import CHANNEL_ORDER

# Inputs.
IMAGES = "images"  # uint8 [B, N, 3, H, W], B, G, R (network_input.CHANNEL_ORDER), not normalised
INTRINSICS = "intrinsics"  # float32 [B, N, 3, 3], pixels of the source image
SENSOR2EGO = "sensor2ego"  # float32 [B, N, 4, 4], camera -> ego (nuScenes calibrated_sensor)
POST_ROTS = "post_rots"  # float32 [B, N, 3, 3], source pixels -> model input pixels (resize/crop)
POST_TRANS = "post_trans"  # float32 [B, N, 3]
INPUT_NAMES: tuple[str, ...] = (IMAGES, INTRINSICS, SENSOR2EGO, POST_ROTS, POST_TRANS)

# Output.
SEMANTICS = "semantics"  # uint8 [B, X, Y, Z] = [B, 200, 200, 16], class index per voxel
OUTPUT_NAMES: tuple[str, ...] = (SEMANTICS,)

# Temporal models' further inputs. Cs: stereo feature channels; Cin: image-feature channels; D: depth bins;
# s: the view transformer's stride (16 for the reference configs).
PREV_SENSOR2EGO = "prev_sensor2ego"  # float32 [B, N, 4, 4]: the previous frame's cameras -> this frame's
# key ego (CAM_FRONT_LEFT's ego pose), composed in float64 by the host; read only where history >= 1
HISTORY = "history"  # int32 [B, 1]: real past frames this frame uses: 0 none (a cold start: the frame
# stands in for t-1 and t-2, as the reference at a scene start), 1 (t-1; t-2 is this frame), 2
STATE_STEREO = "state_stereo"  # float32 [B, N, Cs, H/4, W/4]: t-1's stride-4 stereo feature
STATE_REDUCED = "state_reduced"  # float32 [B, N, Cin, H/s, W/s]: t-1's depth-net input after reduce_conv
STATE_COST = "state_cost"  # float32 [B, N, D, H/s, W/s]: t-1's cost volume against t-2, after cost_volumn_net
STATE_NAMES: tuple[str, ...] = (STATE_STEREO, STATE_REDUCED, STATE_COST)
TEMPORAL_INPUT_NAMES: tuple[str, ...] = (PREV_SENSOR2EGO, HISTORY, *STATE_NAMES)
HISTORY_DTYPE = np.dtype(np.int32)
MAX_HISTORY = 2  # t-1 and t-2


def next_state(name: str) -> str:
    """The output that carries state input `name` of the next frame: this frame's value."""
    return f"next_{name}"


@dataclass(frozen=True)
class StateTensor:
    """One state tensor of a temporal model: the input it is read from, the output it is written to, and its
    size per frame."""

    name: str  # the input (the previous frame's value), one of STATE_NAMES
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str = "float32"

    @property
    def output(self) -> str:
        return next_state(self.name)

    @property
    def nbytes(self) -> int:
        """Bytes of one frame's tensor."""
        return np.dtype(self.dtype).itemsize * math.prod(self.shape)

    def to_json(self) -> dict:
        return {"input": self.name, "output": self.output, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, value: Mapping) -> "StateTensor":
        tensor = cls(str(value["input"]), tuple(int(n) for n in value["shape"]), str(value["dtype"]))
        if tensor.output != value["output"] or any(n < 1 for n in tensor.shape):
            raise ValueError(f"state tensor {value!r}: output or shape is not the contract's")
        np.dtype(tensor.dtype)  # TypeError for an unknown type
        return tensor

# ONNX metadata_props keys; values are JSON.
META_CONFIG = "occ.config"  # config name, e.g. "flashocc-r50-256x704"
META_INPUT_SIZE = "occ.input_size"  # [H, W]
META_GRID = "occ.grid"  # {"shape": [...], "range_m": [...], "voxel_size_m": [...]}
META_CLASSES = "occ.classes"  # class names in label order
META_TEMPORAL = "occ.temporal"  # true for models that carry state between frames
# Temporal models only: their state tensors ([StateTensor.to_json(), ...]), the seconds between the frames
# they were trained on (0.5: nuScenes keyframes), and the reference's test path they follow ("relift": t-1
# lifted with its own cameras; "align_after_view_transformation": t-1's BEV map warped by the ego motion).
META_STATE = "occ.state"
META_FRAME_GAP = "occ.frame_gap_s"
META_TEST_PATH = "occ.test_path"
TEST_PATHS = ("relift", "align_after_view_transformation")
# The channel order the `images` input takes, "bgr". Models exported before the order was the
# reference's (they took R, G, B and normalised it with the statistics meant for B, G, R) have no such
# key: they are refused, never fed the wrong order.
META_CHANNEL_ORDER = "occ.channel_order"


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself in its metadata_props: written by the export, read by the
    gateway (from the ONNX file, or from the Triton config's `parameters` where the export copies them)."""

    config: str  # training config name, e.g. "flashocc-r50-256x704"
    input_size: tuple[int, int]  # (H, W) of the `images` input
    grid_shape: tuple[int, int, int]
    range_m: tuple[float, ...]  # x_min, y_min, z_min, x_max, y_max, z_max
    voxel_size_m: tuple[float, float, float]
    classes: tuple[str, ...]
    temporal: bool
    # Temporal models only (see META_STATE).
    state: tuple[StateTensor, ...] = ()
    frame_gap_s: float | None = None
    test_path: str | None = None

    def to_props(self) -> dict[str, str]:
        """The occ.* metadata_props, JSON values."""
        values = {
            META_CONFIG: self.config,
            META_INPUT_SIZE: list(self.input_size),
            META_GRID: {"shape": list(self.grid_shape), "range_m": list(self.range_m),
                        "voxel_size_m": list(self.voxel_size_m)},
            META_CLASSES: list(self.classes),
            META_TEMPORAL: self.temporal,
            META_CHANNEL_ORDER: CHANNEL_ORDER,
        }
        if self.temporal:
            values |= {META_STATE: [tensor.to_json() for tensor in self.state],
                       META_FRAME_GAP: self.frame_gap_s, META_TEST_PATH: self.test_path}
        return {key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> "ModelMetadata":
        """Parse `to_props`'s output; InputError naming `source` if any value is missing or unusable."""
        try:
            values = {key: json.loads(props[key]) for key in
                      (META_CONFIG, META_INPUT_SIZE, META_GRID, META_CLASSES, META_TEMPORAL)}
            grid = values[META_GRID]
            voxel = grid["voxel_size_m"]
            height, width = values[META_INPUT_SIZE]
            metadata = cls(
                config=str(values[META_CONFIG]),
                input_size=(int(height), int(width)),
                grid_shape=tuple(int(n) for n in grid["shape"]),
                range_m=tuple(float(v) for v in grid["range_m"]),
                voxel_size_m=tuple(float(v) for v in (voxel if isinstance(voxel, list) else [voxel] * 3)),
                classes=tuple(str(c) for c in values[META_CLASSES]),
                temporal=bool(values[META_TEMPORAL]),
                **(_temporal_fields(props) if values[META_TEMPORAL] else {}),
            )
            if "free" not in metadata.classes:
                raise ValueError("the class table has no 'free' class")
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{source}: unusable occ.* metadata ({error!r}); re-export the model") from error
        if props.get(META_CHANNEL_ORDER) != json.dumps(CHANNEL_ORDER):
            raise InputError(f"{source}: exported for images in R, G, B order, before the models took the "
                             f"reference's {CHANNEL_ORDER.upper()} (no {META_CHANNEL_ORDER} = "
                             f"{json.dumps(CHANNEL_ORDER)}); re-export it with `occ export`, from a "
                             "checkpoint trained on B, G, R (every reference checkpoint is)")
        return metadata

    @property
    def free_class(self) -> int:
        return self.classes.index("free")

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's inputs, in the order the export declares them."""
        return INPUT_NAMES + (TEMPORAL_INPUT_NAMES if self.temporal else ())

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES + tuple(tensor.output for tensor in self.state)

    @property
    def state_bytes(self) -> int:
        """Bytes of one frame's state (0 for single-frame models)."""
        return sum(tensor.nbytes for tensor in self.state)


def zero_state(state: tuple[StateTensor, ...], batch_size: int = 1) -> dict[str, np.ndarray]:
    """The state inputs of a frame without a past one (history 0): never read, but every input is given."""
    return {tensor.name: np.zeros((batch_size, *tensor.shape), tensor.dtype) for tensor in state}


def _temporal_fields(props: Mapping[str, str]) -> dict:
    """The state, frame gap and test path of a temporal model's props (KeyError, ValueError if unusable)."""
    if META_STATE not in props:
        raise ValueError(f"a temporal model without {META_STATE}: exported before frame-by-frame serving")
    state = tuple(StateTensor.from_json(value) for value in json.loads(props[META_STATE]))
    if tuple(tensor.name for tensor in state) != STATE_NAMES:
        raise ValueError(f"state tensors {[t.name for t in state]}, expected {list(STATE_NAMES)}")
    frame_gap_s = float(json.loads(props[META_FRAME_GAP]))
    test_path = json.loads(props[META_TEST_PATH])
    if not frame_gap_s > 0 or test_path not in TEST_PATHS:
        raise ValueError(f"frame gap {frame_gap_s} s or test path {test_path!r} unusable")
    return {"state": state, "frame_gap_s": frame_gap_s, "test_path": test_path}
