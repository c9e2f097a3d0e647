"""The occupancy loss of FlashOCC's BEVOCCHead2D/3D (projects/mmdet3d_plugin/models/dense_heads/
bev_occ_head.py): cross-entropy over the voxels the cameras see (`mask_camera`), optionally
class-balanced with weights 1 / log(class frequency).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from occupancy.classes import IGNORE_INDEX

# Voxel counts per Occ3D-nuScenes class (label order, `free` last), the reference's
# `nusc_class_frequencies`; only their logarithms matter.
OCC3D_CLASS_FREQUENCIES: tuple[int, ...] = (
    944004, 1897170, 152386, 2391677, 16957802, 724139, 189027, 2074468, 413451,
    2384460, 5916653, 175883646, 4275424, 51393615, 61411620, 105975596, 116424404, 1892500630,
)


def occ3d_class_weights(num_classes: int = 18) -> Tensor:
    """Per-class weights 1 / log(frequency + 0.001), float32 (0.072 for `others` ... 0.047 for `free`)."""
    frequencies = torch.tensor(OCC3D_CLASS_FREQUENCIES[:num_classes], dtype=torch.float64)
    return (1.0 / torch.log(frequencies + 0.001)).float()


def masked_cross_entropy(
    logits: Tensor, semantics: Tensor, mask: Tensor, class_weights: Tensor | None = None
) -> Tensor:
    """Mean cross-entropy over the voxels where `mask` is set.

    Args:
        logits: B x X x Y x Z x K.
        semantics: B x X x Y x Z class indices; IGNORE_INDEX (255) contributes zero loss.
        mask: B x X x Y x Z bool, the camera visibility mask.
        class_weights: K weights, or None for plain cross-entropy.

    Returns:
        A scalar: the sum of (class-weighted) losses over masked voxels divided by the number of
        masked voxels, or, with class weights, by the sum of their labels' weights (the reference's
        avg_factor; ignored labels count in the plain denominator but not in the weighted one).
    """
    num_classes = logits.shape[-1]
    labels = semantics.reshape(-1).long()
    weight = mask.reshape(-1).to(logits.dtype)
    per_voxel = F.cross_entropy(logits.reshape(-1, num_classes), labels, weight=class_weights,
                                reduction="none", ignore_index=IGNORE_INDEX)
    if class_weights is None:
        avg_factor = weight.sum()
    else:
        valid = (labels >= 0) & (labels < num_classes)
        avg_factor = (class_weights[labels.clamp(0, num_classes - 1)] * valid * weight).sum()
    # mmdet's weight_reduce_loss adds float32 eps so that an empty mask gives 0, not NaN.
    return (per_voxel * weight).sum() / (avg_factor + torch.finfo(torch.float32).eps)
