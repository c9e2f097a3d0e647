"""The seed's RenderOcc / RenderOcc2D head (FlashOCC_on_UniOcc_and_RenderOCC mmdet3d/models/detectors/
render_occ.py) and pmj's RenderOcc head: a density pair [occupied, free] and 17 semantic logits per voxel,
what the 3D loss and the rendering head (`nerf_head`) read.

Over 3D voxel features (RenderOcc) or, channel-to-height like FlashOcc's BEVOCCHead2D, over a BEV feature
whose cells' MLPs give all Dz slices (RenderOcc2D). The temporal RenderOcc models carry its layers at the
state dict's top level, as the reference's detector defines them; single-frame models as `occ_head`.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn

from occupancy.classes import FREE_CLASS
from training.batch import OccupancyTargets
from training.models.bev_encoder import ConvModule
from training.models.heads import cells_last
from training.models.losses import cross_entropy_loss

RENDEROCC_TEST_THRESHOLD = 8.5  # pmj RenderOcc's test_threshold on the occupied score


class DensitySemantics(NamedTuple):
    """The RenderOcc heads' per-voxel outputs (what the rendering head samples along rays)."""

    density: Tensor  # B x X x Y x Z x 2: scores of [occupied, free] (Softplus'd where final_softplus)
    semantics: Tensor  # B x X x Y x Z x (classes - 1): logits over the classes except free


class RenderOccHead(nn.Module):
    """`final_conv`, `density_mlp`, `semantic_mlp` and the buffer `semantic_loss.weight`.

    Args:
        in_dim: channels of the encoded feature; out_dim: after `final_conv` (MLP hidden: 2 x out_dim).
        dz: None for 3D voxel features (B x C x Z x Y x X); else the height slices of a 2D BEV feature.
        num_classes: with free (18); the semantic head predicts the others.
        final_softplus: a Softplus after the density MLP (the configs' `final_softplus=True`).
        class_weights: `semantic_loss`'s per-class weights (17).
        test_threshold: pmj's RenderOcc rule (occupied where the occupied score > 8.5); None: the seed's
            rule (occupied where the occupied score is the larger of the two, argmax == 0). Training from
            2D labels alone trains only the occupied score (the rendered one), so only a threshold can
            decide there.

    Holds no tensors of its own (only its layers'), so a model may carry the layers under its own names.
    """

    def __init__(self, in_dim: int, out_dim: int, dz: int | None, num_classes: int, final_softplus: bool,
                 class_weights: Tensor, test_threshold: float | None) -> None:
        super().__init__()
        self.dz = dz
        self.num_classes = num_classes
        self.test_threshold = test_threshold
        slices = dz or 1
        self.final_conv = ConvModule(in_dim, out_dim, 3, padding=1, dims=3 if dz is None else 2, norm=False,
                                     bias=True)
        density = [nn.Linear(out_dim, out_dim * 2), nn.Softplus(), nn.Linear(out_dim * 2, 2 * slices)]
        self.density_mlp = nn.Sequential(*density, *([nn.Softplus()] if final_softplus else []))
        self.semantic_mlp = nn.Sequential(nn.Linear(out_dim, out_dim * 2), nn.Softplus(),
                                          nn.Linear(out_dim * 2, (num_classes - 1) * slices))
        self.semantic_loss = nn.CrossEntropyLoss(weight=class_weights)

    def forward(self, bev: Tensor) -> DensitySemantics:
        if self.dz is None:  # B x C x Z x Y x X -> B x X x Y x Z x C
            voxels = self.final_conv(bev).permute(0, 4, 3, 2, 1)
            return DensitySemantics(self.density_mlp(voxels), self.semantic_mlp(voxels))
        cells = cells_last(self.final_conv, bev)  # B x X x Y x C
        shape = (*cells.shape[:3], self.dz)
        return DensitySemantics(self.density_mlp(cells).view(*shape, 2),
                                self.semantic_mlp(cells).view(*shape, self.num_classes - 1))

    def losses(self, output: DensitySemantics, targets: OccupancyTargets) -> dict[str, Tensor]:
        """`loss_3d_geo`: cross-entropy of [occupied, free] over the camera-visible voxels; `loss_3d_sem`:
        `semantic_loss` over the visible voxels that are not free (the seed's `loss_3d`)."""
        visible = targets.mask_camera
        free = targets.semantics == FREE_CLASS
        geo = cross_entropy_loss(output.density[visible].float(), free[visible].long(), None)
        occupied = visible & ~free
        # The weighted mean of nn.CrossEntropyLoss(weight) (sum w l / sum w); 0 rather than its NaN
        # when a batch has no visible occupied voxel.
        sem = cross_entropy_loss(output.semantics[occupied].float(), targets.semantics[occupied],
                                 self.semantic_loss.weight)
        return {"loss_3d_geo": geo, "loss_3d_sem": sem}

    def classes(self, output: DensitySemantics) -> Tensor:
        """The semantic argmax where occupied, else free; argmax's first-maximum rule for the seed's test."""
        score = output.density[..., 0]
        if self.test_threshold is not None:
            occupied = score > self.test_threshold
        else:
            occupied = score >= output.density[..., 1]
        free = torch.full_like(score, FREE_CLASS, dtype=torch.long)
        return torch.where(occupied, output.semantics.argmax(-1), free)

    def scores(self, output: DensitySemantics) -> Tensor:
        """B x X x Y x Z x classes scores whose argmax is `classes` (up to exact ties at the threshold):
        the semantic logits, and for `free` their maximum plus the margin by which the voxel is free
        (threshold - occupied score, or free - occupied score). What single-frame models and their export
        take the argmax of, as for every other head."""
        density = output.density
        if self.test_threshold is None:
            margin = density[..., 1] - density[..., 0]
        else:
            margin = self.test_threshold - density[..., 0]
        free = output.semantics.amax(dim=-1) + margin
        return torch.cat([output.semantics, free[..., None]], dim=-1)

    @staticmethod
    def render_fields(output: DensitySemantics, shift: Tensor) -> tuple[Tensor, Tensor]:
        """Raw density (the occupied score) and semantics for the rendering head (`shift`, Raw2Alpha's,
        is applied there)."""
        return output.density[..., 0], output.semantics
