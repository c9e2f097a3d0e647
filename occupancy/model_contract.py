"""The exported model's interface: tensor names, dtypes, and its metadata with one encode/decode pair.

The export code writes these and the gateway reads them, so both import them from here instead
of spelling the strings twice. Shapes: B frames, N = 6 cameras in CAMERA_NAMES order, H x W the
model's input size.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass

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

# ONNX metadata_props keys; values are JSON.
META_CONFIG = "occ.config"  # config name, e.g. "flashocc-r50-256x704"
META_INPUT_SIZE = "occ.input_size"  # [H, W]
META_GRID = "occ.grid"  # {"shape": [...], "range_m": [...], "voxel_size_m": [...]}
META_CLASSES = "occ.classes"  # class names in label order
META_TEMPORAL = "occ.temporal"  # true for models that carry state between frames
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
