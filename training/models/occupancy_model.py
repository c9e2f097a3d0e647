"""The single-frame occupancy network: FlashOCC's BEVDetOCC (detectors/bevdet_occ.py) as a plain module.

Stages arrive as constructor arguments, as in torchvision's GeneralizedRCNN; their attribute names
are the reference's, so reference checkpoints load key for key.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from training.batch import CameraBatch, OccupancyTargets, RayBatch
from training.models.render_occ_head import DensitySemantics


class OccupancyModel(nn.Module):
    """Images + camera geometry -> per-voxel class logits.

    Args:
        img_backbone: B*N x 3 x H x W -> list of feature maps (ResNet, Swin).
        img_neck: that list -> list whose first entry is B*N x C x H/16 x W/16 (CustomFPN).
        img_view_transformer: (B x N x C x fH x fW, CameraBatch) -> (BEV feature, depth).
        img_bev_encoder_backbone: BEV feature -> list of levels (CustomResNet, CustomResNet3D).
        img_bev_encoder_neck: levels -> one BEV feature (FPN_LSS, LSSFPN3D).
        occ_head: BEV feature -> B x X x Y x Z x classes logits, with `loss(logits, targets)`; or a
            RenderOccHead (density and semantics, its own losses and test-time rule).
        upsample_bev: double the BEV feature's resolution (bilinear) before the head: the
            reference's `upsample` option, for encoders that run at half the output resolution.
        nerf_head: the rendering head (training only: buffers, no parameters) that turns the head's
            output into the rendering losses against rays with 2D labels; None without rendering.
    """

    def __init__(
        self,
        img_backbone: nn.Module,
        img_neck: nn.Module,
        img_view_transformer: nn.Module,
        img_bev_encoder_backbone: nn.Module,
        img_bev_encoder_neck: nn.Module,
        occ_head: nn.Module,
        upsample_bev: bool = False,
        nerf_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.img_backbone = img_backbone
        self.img_neck = img_neck
        self.img_view_transformer = img_view_transformer
        self.img_bev_encoder_backbone = img_bev_encoder_backbone
        self.img_bev_encoder_neck = img_bev_encoder_neck
        self.occ_head = occ_head
        self.upsample_bev = upsample_bev
        self.nerf_head = nerf_head

    def encode_images(self, images: Tensor) -> Tensor:
        """B x N x 3 x H x W normalised images (B, G, R) -> B x N x C x H/16 x W/16 features."""
        b, n = images.shape[:2]
        feats = self.img_neck(self.img_backbone(images.flatten(0, 1)))[0]
        return feats.view(b, n, *feats.shape[1:])

    def encode_bev(self, batch: CameraBatch) -> tuple[Tensor, Tensor]:
        """The BEV feature the head reads (B x C x Y x X or B x C x Z x Y x X) and the per-camera
        depth probabilities B x N x D x fH x fW (for depth supervision)."""
        bev, depth = self.img_view_transformer(self.encode_images(batch.images), batch)
        bev = self.img_bev_encoder_neck(self.img_bev_encoder_backbone(bev))
        if self.upsample_bev:
            bev = F.interpolate(bev, scale_factor=2, mode="bilinear", align_corners=True)
        return bev, depth

    def forward(self, batch: CameraBatch, return_depth: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits B x X x Y x Z x classes over the Occ3D grid (ego frame, indexed [x, y, z]), or a RenderOcc
        head's DensitySemantics; with
        `return_depth` also the depth probabilities B x N x D x fH x fW, for depth supervision (a
        keyword of `forward` rather than another method so DistributedDataParallel sees the call)."""
        bev, depth = self.encode_bev(batch)
        logits = self.occ_head(bev)
        return (logits, depth) if return_depth else logits

    def loss(self, logits: Tensor, targets: OccupancyTargets) -> Tensor:
        """Scalar training loss of `forward`'s logits (the head's camera-masked cross-entropy)."""
        return self.occ_head.loss(logits, targets)

    def losses(self, output: Tensor | DensitySemantics, targets: OccupancyTargets) -> dict[str, Tensor]:
        """The named losses the trainer sums (every model has this method): `loss_occ` of the logits, in
        float32, or a RenderOcc head's `loss_3d_geo` and `loss_3d_sem`."""
        if isinstance(output, DensitySemantics):
            return self.occ_head.losses(output, targets)
        return {"loss_occ": self.loss(output.float(), targets)}

    def render_losses(self, output: Tensor | DensitySemantics, rays: RayBatch, bda: Tensor,
                      ) -> dict[str, Tensor]:
        """The rendering losses of `forward`'s output along the batch's rays (NerfHead.forward)."""
        return self.nerf_head(*self.occ_head.render_fields(output, self.nerf_head.act_shift), rays, bda)

    def depth_loss(self, depth: Tensor, gt_depth: Tensor) -> Tensor:
        """Unweighted BEVDepth depth loss of `forward`'s depth against B x N x H x W input-resolution
        depths in metres (0 = no point)."""
        return self.img_view_transformer.get_depth_loss(gt_depth, depth)

    def predict(self, batch: CameraBatch) -> Tensor:
        """Class index per voxel, B x X x Y x Z int64."""
        return self.classes(self(batch))

    def classes(self, output: Tensor | DensitySemantics) -> Tensor:
        """The class per voxel of `forward`'s output: the argmax of the logits, or a RenderOcc head's rule."""
        if isinstance(output, DensitySemantics):
            return self.occ_head.classes(output)
        return output.argmax(-1)

    def scores(self, output: Tensor | DensitySemantics) -> Tensor:
        """B x X x Y x Z x classes scores whose argmax is `classes` (logits, or a RenderOcc head's scores)."""
        return self.occ_head.scores(output) if isinstance(output, DensitySemantics) else output
