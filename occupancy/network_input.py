"""What the networks take as images, in names that need no image library (the gateway reads its settings
and the model metadata before OpenCV may be imported): channel order, normalisation, resampling.

The reference pipelines open images with PIL (R, G, B) and normalise them with mmcv's
`imnormalize(img, mean, std, to_rgb=True)`, which swaps the channels once more: every published checkpoint
saw B, G, R, minus NORMALIZE_MEAN and divided by NORMALIZE_STD in that order (BEVDet #274, BEVDepth
#186). occupancy/preprocess.py makes such inputs.
"""

from typing import Literal

# The order of the three channels the networks see (and the exported graph's `images` input takes).
CHANNEL_ORDER = "bgr"
# Subtracted from and divided into channels 0, 1, 2 (B, G, R): the ImageNet RGB statistics, applied to
# B, G, R channels, as every reference checkpoint was trained.
NORMALIZE_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
NORMALIZE_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

# fast: reduced JPEG decoding and OpenCV's resampling; reference: a full decode and PIL's bicubic resize.
Resampling = Literal["fast", "reference"]
FAST: Resampling = "fast"
REFERENCE: Resampling = "reference"
RESAMPLINGS: tuple[Resampling, ...] = (FAST, REFERENCE)
