"""The exported model's interface: tensor names, dtypes and metadata keys.

The export code writes these and the gateway reads them, so both import them from here instead
of spelling the strings twice. Shapes: B frames, N = 6 cameras in CAMERA_NAMES order, H x W the
model's input size.
"""

# Inputs.
IMAGES = "images"  # uint8 [B, N, 3, H, W], RGB, not normalised (the graph normalises)
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
