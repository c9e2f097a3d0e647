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


# The seed's and RenderOcc's `nusc_class_frequencies` (their "CVPR workshop" counts, another list than
# FlashOCC's): the class weights of their RenderOcc heads' `semantic_loss` and rendering head.
RENDEROCC_CLASS_FREQUENCIES: tuple[int, ...] = (
    1163161, 2309034, 188743, 2997643, 20317180, 852476, 243808, 2457947, 497017,
    2731022, 7224789, 214411435, 5565043, 63191967, 76098082, 128860031, 141625221, 2307405309,
)


def renderocc_class_weights(normalised: bool) -> Tensor:
    """The 17 non-free classes' 1 / log(frequency + 0.001) of RenderOcc's list, float32; RenderOcc2D divides
    them by their sum (seed mmdet3d/models/detectors/render_occ.py:41-47, 218-226)."""
    frequencies = torch.tensor(RENDEROCC_CLASS_FREQUENCIES[:17], dtype=torch.float64)
    weights = (1.0 / torch.log(frequencies + 0.001)).float()
    return weights / weights.sum() if normalised else weights


def occ3d_class_weights(num_classes: int = 18) -> Tensor:
    """Per-class weights 1 / log(frequency + 0.001), float32 (0.072 for `others` ... 0.047 for `free`)."""
    frequencies = torch.tensor(OCC3D_CLASS_FREQUENCIES[:num_classes], dtype=torch.float64)
    return (1.0 / torch.log(frequencies + 0.001)).float()


def cross_entropy_loss(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the voxels given (the head passes the camera-visible ones).

    Args:
        logits: V x K, one row per voxel.
        labels: V class indices; IGNORE_INDEX (255) contributes zero loss.
        class_weights: K weights, or None for plain cross-entropy.

    Returns:
        A scalar: the sum of (class-weighted) losses divided by the number of voxels, or, with class
        weights, by the sum of their labels' weights (the reference's avg_factor; ignored labels count
        in the plain denominator but not in the weighted one).
    """
    num_classes = logits.shape[-1]
    labels = labels.long()
    per_voxel = F.cross_entropy(logits, labels, weight=class_weights, reduction="none",
                                ignore_index=IGNORE_INDEX)
    if class_weights is None:
        avg_factor = torch.tensor(float(labels.numel()), device=logits.device)
    else:
        valid = (labels >= 0) & (labels < num_classes)
        avg_factor = (class_weights[labels.clamp(0, num_classes - 1)] * valid).sum()
    # mmdet's weight_reduce_loss adds float32 eps so that no voxel at all gives 0, not NaN.
    return per_voxel.sum() / (avg_factor + torch.finfo(torch.float32).eps)


def _affinity_terms(hits: Tensor, predicted: Tensor, actual: Tensor, total: Tensor) -> Tensor:
    """-log precision, -log recall and -log specificity of soft predictions, from sums per set:
    `hits` = sum of the probabilities over the set's voxels, `predicted` = over all voxels, `actual` =
    the set's size, `total` = the voxel count. Terms whose denominator is 0 are left out."""
    negatives = total - actual
    eps = torch.finfo(torch.float32).eps
    terms = []
    # Clamped denominators keep the gradient finite where a term is left out (0 / 0).
    true_negatives = negatives - predicted + hits
    for numerator, denominator in ((hits, predicted), (hits, actual), (true_negatives, negatives)):
        ratio = (numerator / denominator.clamp(min=eps)).clamp(eps, 1.0)
        terms.append(torch.where(denominator > 0, -torch.log(ratio), 0.0))
    return sum(terms)


def scene_class_affinity_loss(logits: Tensor, labels: Tensor, free_index: int) -> Tensor:
    """MonoScene's scene-class affinity losses (`sem_scal_loss` + `geo_scal_loss`) over the voxels given.

    Cross-entropy scores each voxel alone, so a class that fills 0.1 % of the visible voxels barely
    moves it; these terms score each class as a set: its precision, recall and specificity over the
    batch's visible voxels, each as -log, like the IoU the metric takes. The semantic term averages
    over the classes present; the geometric one treats every class but `free` as occupied. All
    three ratios come from per-class sums, so the cost is one softmax.

    Args:
        logits: V x K, one row per voxel (the head passes the camera-visible ones).
        labels: V class indices; IGNORE_INDEX voxels are skipped.
    """
    num_classes = logits.shape[-1]
    labels = labels.long()
    keep = (labels != IGNORE_INDEX).float()
    labels = labels.clamp(0, num_classes - 1)
    probabilities = logits.float().softmax(-1)
    total = keep.sum()
    predicted = keep @ probabilities
    own = probabilities.gather(1, labels[:, None])[:, 0] * keep  # each kept voxel's own-class probability
    hits = own.new_zeros(num_classes).index_add(0, labels, own)
    actual = keep.new_zeros(num_classes).index_add(0, labels, keep)
    present = actual > 0
    if not present.any():
        return logits.sum() * 0.0
    semantic = _affinity_terms(hits, predicted, actual, total)[present].mean()
    # Occupied = not free: its probability mass over occupied voxels is the free class's misses.
    occupied_actual = total - actual[free_index]
    occupied_predicted = total - predicted[free_index]
    occupied_hits = occupied_actual - (predicted[free_index] - hits[free_index])
    return semantic + _affinity_terms(occupied_hits, occupied_predicted, occupied_actual, total)
