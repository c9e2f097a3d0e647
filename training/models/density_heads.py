"""A density + semantics head over a BEV feature: the seed's RenderOcc2D head (FlashOCC_on_UniOcc_and_
RenderOCC mmdet3d/models/detectors/render_occ.py `RenderOcc2D`) with its names (`final_conv`,
`density_mlp`, `semantic_mlp`), for the rendering head to composite.

Channel-to-height like FlashOcc's BEVOCCHead2D: each BEV cell's MLPs give all Dz slices, a density pair
(occupied, free) and 17 semantic logits per voxel. What it returns depends on the mode, as torchvision's
detection models do: in training the fields themselves, B x X x Y x Z x (2 + 17) (the density pair,
then the semantics: what the 3D loss and the rendering read), in eval mode B x X x Y x Z x 18 class
scores whose argmax is the test-time rule, so evaluation and export take the argmax as for every other
head. The rule is the seed's (occupied where the density pair's argmax says so) or, with
`density_threshold`, pmj's RenderOcc (occupied where the occupied channel exceeds it, 8.5): training from
2D labels alone trains the occupied channel only (the rendered one), so only the threshold can decide.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occupancy.classes import FREE_CLASS
from training.batch import OccupancyTargets
from training.models.bev_encoder import ConvModule
from training.models.rendering import renderocc_class_weights

DENSITY_CHANNELS = 2  # (occupied, free) per voxel; rendering reads the occupied one as raw density
RENDEROCC_TEST_THRESHOLD = 8.5  # pmj RenderOcc's test_threshold on the occupied channel


@dataclass(frozen=True)
class DensityHeadConfig:
    """RenderOcc2D's head: `out_dim` channels after final_conv, MLPs of 2 x out_dim hidden units."""

    out_dim: int = 256
    final_softplus: bool = True  # a Softplus after density_mlp (every reference config sets it)
    density_threshold: float | None = None  # None: the density pair's argmax decides occupancy


class RenderOcc2DHead(nn.Module):
    """B x C x Y x X BEV feature -> density pair and semantics per voxel of a Dz-slice grid.

    Args:
        in_dim: channels of the BEV feature.
        Dz: height slices.
        num_classes: classes including `free` (the semantics have one fewer).
        config: widths and the occupancy rule.
        use_mask: the 3D loss sees only camera-visible voxels (the seed's loss_3d does).
    """

    def __init__(self, in_dim: int, Dz: int, num_classes: int, config: DensityHeadConfig,
                 use_mask: bool = True) -> None:
        super().__init__()
        self.Dz = Dz
        self.num_classes = num_classes
        self.density_threshold = config.density_threshold
        self.use_mask = use_mask
        out_dim = config.out_dim
        self.final_conv = ConvModule(in_dim, out_dim, 3, padding=1, norm=False, bias=True)
        self.density_mlp = nn.Sequential(
            nn.Linear(out_dim, out_dim * 2),
            nn.Softplus(),
            nn.Linear(out_dim * 2, DENSITY_CHANNELS * Dz),
            *([nn.Softplus()] if config.final_softplus else []),
        )
        self.semantic_mlp = nn.Sequential(
            nn.Linear(out_dim, out_dim * 2),
            nn.Softplus(),
            nn.Linear(out_dim * 2, (num_classes - 1) * Dz),
        )
        # Not persistent: the reference's semantic CrossEntropyLoss keeps its weight in its own module.
        self.register_buffer("class_weights", renderocc_class_weights(num_classes - 1), persistent=False)

    def fields(self, bev_feat: Tensor) -> tuple[Tensor, Tensor]:
        """B x C x Y x X -> density pair B x X x Y x Dz x 2 and semantics B x X x Y x Dz x (classes - 1)."""
        x = self.final_conv(bev_feat).permute(0, 3, 2, 1)  # B x X x Y x C
        b, size_x, size_y = x.shape[:3]
        density = self.density_mlp(x).view(b, size_x, size_y, self.Dz, DENSITY_CHANNELS)
        semantic = self.semantic_mlp(x).view(b, size_x, size_y, self.Dz, self.num_classes - 1)
        return density, semantic

    def forward(self, bev_feat: Tensor) -> Tensor:
        density, semantic = self.fields(bev_feat)
        if self.training:
            return torch.cat([density, semantic], dim=-1)
        return self.class_scores(density, semantic)

    def class_scores(self, density: Tensor, semantic: Tensor) -> Tensor:
        """Scores whose argmax is the occupancy rule: the semantics, and for `free` their maximum plus the
        margin by which the voxel is free (threshold - density, or free - occupied channel)."""
        if self.density_threshold is None:
            margin = density[..., 1] - density[..., 0]
        else:
            margin = self.density_threshold - density[..., 0]
        free = semantic.amax(dim=-1) + margin
        return torch.cat([semantic, free[..., None]], dim=-1)

    @staticmethod
    def split(fields: Tensor) -> tuple[Tensor, Tensor]:
        """The training-mode output back into the density pair and the semantics."""
        return fields[..., :DENSITY_CHANNELS], fields[..., DENSITY_CHANNELS:]

    def render_fields(self, fields: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        """Raw density (the occupied channel) and semantics for the rendering head (`shift` is Raw2Alpha's,
        applied there)."""
        density, semantic = self.split(fields)
        return density[..., 0], semantic

    def loss(self, fields: Tensor, targets: OccupancyTargets) -> Tensor:
        """The seed's loss_3d: loss_3d_geo (cross-entropy of the density pair against occupied / free,
        averaged over the camera-visible voxels) + loss_3d_sem (class-weighted cross-entropy of the
        semantics over the visible occupied voxels)."""
        density, semantic = self.split(fields.float())
        labels = targets.semantics
        mask = targets.mask_camera if self.use_mask else torch.ones_like(targets.mask_camera)
        free = (labels == FREE_CLASS).long()
        geo = F.cross_entropy(density[mask], free[mask], reduction="sum") / mask.sum().clamp(min=1)
        occupied = mask & (labels != FREE_CLASS)
        if occupied.any():
            sem = F.cross_entropy(semantic[occupied], labels[occupied], weight=self.class_weights)
        else:
            sem = semantic.sum() * 0.0
        return geo + sem
