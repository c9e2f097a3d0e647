"""Occupancy heads: BEV or voxel features -> per-voxel class logits B x X x Y x Z x classes.

FlashOCC's BEVOCCHead2D (channel-to-height: one BEV cell's feature predicts all Dz slices) and
BEVOCCHead3D (projects/mmdet3d_plugin/models/dense_heads/bev_occ_head.py), with the reference's
names (`final_conv.conv`, `predicter.0`, `predicter.2`).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occupancy.classes import FREE_CLASS
from occupancy.model_repository import Runtime
from training.batch import OccupancyTargets
from training.models.bev_encoder import ConvModule
from training.models.bev_pool import onnx_export_target
from training.models.losses import cross_entropy_loss, occ3d_class_weights, scene_class_affinity_loss
from training.models.rendering import density_from_class_logits


class Softplus(nn.Module):
    """nn.Softplus (beta 1), exported for ONNX Runtime as relu(x) + log1p(exp(-|x|)).

    ONNX Runtime's CPU Softplus kernel took 12 ms for demo-tiny's 40,000 x 64 hidden layer, the
    decomposition 3 ms (7 vectorised element-wise ops), equal to 6e-7 (benchmarks/onnx_runtime_results.md).
    TensorRT keeps the Softplus operator. No parameters, so checkpoints are unaffected.
    """

    def forward(self, x: Tensor) -> Tensor:
        if onnx_export_target() is Runtime.ONNXRUNTIME:
            return torch.relu(x) + torch.log1p(torch.exp(-torch.abs(x)))
        return F.softplus(x)


def cells_last(final_conv: ConvModule, bev: Tensor) -> Tensor:
    """`final_conv` over a B x C x Y x X BEV feature, returned as B x X x Y x C (the MLP heads' layout).

    The reference permutes (0, 3, 2, 1) after the conv. The ONNX Runtime export swaps X and Y before the
    conv instead (with the kernel transposed to match, so each output is the same sum) and then moves the
    channels last: ONNX Runtime's CPU Transpose took 3.4 ms for (0, 3, 2, 1) of demo-tiny's 32 x 200 x 200
    and 0.1 ms for (0, 1, 3, 2) or (0, 2, 3, 1) (benchmarks/onnx_runtime_results.md).
    """
    if onnx_export_target() is not Runtime.ONNXRUNTIME:
        return final_conv(bev).permute(0, 3, 2, 1)
    conv = final_conv.conv
    x = F.conv2d(bev.transpose(2, 3), conv.weight.transpose(2, 3), conv.bias, conv.stride[::-1],
                 conv.padding[::-1], conv.dilation[::-1], conv.groups)
    if final_conv.bn is not None:
        x = final_conv.bn(x)
    if final_conv.activate is not None:
        x = final_conv.activate(x)
    return x.permute(0, 2, 3, 1)


class _OccupancyHead(nn.Module):
    """The loss both heads share: cross-entropy over the voxels the cameras see (all voxels without
    `use_mask`), optionally class-balanced, plus MonoScene's scene-class affinity terms where
    `scene_class_affinity` is set (not the reference's)."""

    def __init__(self, num_classes: int, class_balance: bool, use_mask: bool = True,
                 scene_class_affinity: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_balance = class_balance
        self.use_mask = use_mask
        self.scene_class_affinity = scene_class_affinity
        # Not persistent: the reference keeps the weights out of its checkpoints.
        weights = occ3d_class_weights(num_classes) if class_balance else None
        self.register_buffer("cls_weights", weights, persistent=False)

    def loss(self, logits: Tensor, targets: OccupancyTargets) -> Tensor:
        """Scalar loss of B x X x Y x Z x classes logits against the targets."""
        if self.use_mask:
            # Selecting the visible voxels (40 % of a synthetic frame) before the softmax, rather than
            # zero-weighting the rest, makes the loss's forward and backward 1.9x cheaper
            # (benchmarks/train_step.py).
            logits, labels = logits[targets.mask_camera], targets.semantics[targets.mask_camera]
        else:
            logits, labels = logits.reshape(-1, logits.shape[-1]), targets.semantics.reshape(-1)
        loss = cross_entropy_loss(logits, labels, self.cls_weights)
        if self.scene_class_affinity:
            loss = loss + scene_class_affinity_loss(logits, labels, FREE_CLASS)
        return loss

    @staticmethod
    def render_fields(logits: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        """Raw density and semantics for the rendering head: the free class's probability is the light a
        voxel lets through (rendering.density_from_class_logits), the other classes' logits render."""
        return density_from_class_logits(logits, shift), logits[..., :FREE_CLASS]


class BEVOCCHead2D(_OccupancyHead):
    """Channel-to-height head: a 3x3 conv + ReLU, then an MLP per BEV cell to Dz x classes logits.

    Args:
        in_dim: channels of the BEV feature.
        out_dim: channels after `final_conv`; the MLP's hidden layer has 2 * out_dim.
        Dz: height slices of the output grid.
        num_classes: classes per voxel.
        class_balance: weight the loss by 1 / log(class frequency).
        use_mask: train on the camera-visible voxels only (the Occ3D evaluation's); else on all.
        scene_class_affinity: add MonoScene's per-class precision/recall/specificity loss.
    """

    def __init__(self, in_dim: int = 256, out_dim: int = 256, Dz: int = 16, num_classes: int = 18,
                 class_balance: bool = False, use_mask: bool = True, scene_class_affinity: bool = False,
                 ) -> None:
        super().__init__(num_classes, class_balance, use_mask, scene_class_affinity)
        self.Dz = Dz
        self.final_conv = ConvModule(in_dim, out_dim, 3, padding=1, norm=False, bias=True)
        self.predicter = nn.Sequential(
            nn.Linear(out_dim, out_dim * 2),
            Softplus(),
            nn.Linear(out_dim * 2, num_classes * Dz),
        )

    def forward(self, bev_feat: Tensor) -> Tensor:
        """B x C x Y x X -> B x X x Y x Dz x classes (the slice-major split of the MLP's output)."""
        x = cells_last(self.final_conv, bev_feat)  # B x X x Y x C
        b, size_x, size_y = x.shape[:3]
        return self.predicter(x).view(b, size_x, size_y, self.Dz, self.num_classes)


class BEVOCCHead3D(_OccupancyHead):
    """Voxel head: a 3x3x3 conv + ReLU, then an MLP per voxel to class logits.

    Args:
        in_dim: channels of the voxel feature.
        out_dim: channels after `final_conv`; the MLP's hidden layer has 2 * out_dim.
        num_classes: classes per voxel.
        class_balance: weight the loss by 1 / log(class frequency).
        use_mask: train on the camera-visible voxels only (the Occ3D evaluation's); else on all.
        scene_class_affinity: add MonoScene's per-class precision/recall/specificity loss.

    The reference fixes the MLP's width at 32 whatever out_dim says; its configs use out_dim=32.
    """

    def __init__(self, in_dim: int = 32, out_dim: int = 32, num_classes: int = 18,
                 class_balance: bool = False, use_mask: bool = True, scene_class_affinity: bool = False,
                 ) -> None:
        super().__init__(num_classes, class_balance, use_mask, scene_class_affinity)
        self.final_conv = ConvModule(in_dim, out_dim, 3, padding=1, dims=3, norm=False, bias=True)
        self.predicter = nn.Sequential(
            nn.Linear(out_dim, out_dim * 2),
            Softplus(),
            nn.Linear(out_dim * 2, num_classes),
        )

    def forward(self, voxel_feat: Tensor) -> Tensor:
        """B x C x Z x Y x X -> B x X x Y x Z x classes."""
        return self.predicter(self.final_conv(voxel_feat).permute(0, 4, 3, 2, 1))
