"""BEVDepth's camera-aware depth net with BEVStereo's cost-volume input, as BEVDet dev3.0's `DepthNet`
(FlashOCC projects/mmdet3d_plugin/models/model_utils/depthnet.py), with the reference's names so its
checkpoints load: `reduce_conv`, `context_conv`, `bn`, `depth_mlp`, `depth_se`, `context_mlp`,
`context_se`, `cost_volumn_net` (sic), `depth_conv`.

Shapes: B*N camera images, Cin x fH x fW image features, D depth bins, C context channels.
"""

import math

import torch
from torch import Tensor, nn

from training.models.resnet import BasicBlock

MLP_INPUT_SIZE = 27  # see camera_aware_input


def camera_aware_input(sensor2keyego: Tensor, intrinsics: Tensor, post_rots: Tensor, post_trans: Tensor,
                       bda: Tensor) -> Tensor:
    """BEVDepth's `mlp_input`, B x N x 27: fx, fy, cx, cy, the image transform's 2x2 rotation and
    translation (row by row), five entries of the BEV augmentation, then sensor2keyego's top 3 x 4 rows.

    Args:
        sensor2keyego: B x N x 4 x 4, the **key** frame's cameras (the reference feeds every frame the
            key frame's, BEVStereo4D.extract_img_feat).
        intrinsics: B x N x 3 x 3; post_rots: B x N x 3 x 3; post_trans: B x N x 3; bda: B x 3 x 3.
    """
    bda = bda[:, None].expand_as(post_rots)
    values = [intrinsics[..., 0, 0], intrinsics[..., 1, 1], intrinsics[..., 0, 2], intrinsics[..., 1, 2],
              post_rots[..., 0, 0], post_rots[..., 0, 1], post_trans[..., 0],
              post_rots[..., 1, 0], post_rots[..., 1, 1], post_trans[..., 1],
              bda[..., 0, 0], bda[..., 0, 1], bda[..., 1, 0], bda[..., 1, 1], bda[..., 2, 2]]
    return torch.cat([torch.stack(values, -1), sensor2keyego[..., :3, :].flatten(-2)], -1)


class Mlp(nn.Module):
    """fc1, ReLU, fc2 (the reference's dropouts have p = 0)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SELayer(nn.Module):
    """Squeeze-and-excitation by an outside vector: x * sigmoid(expand(relu(reduce(x_se))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, channels, 1, bias=True)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: Tensor, x_se: Tensor) -> Tensor:
        """x: B*N x C x fH x fW; x_se: B*N x C x 1 x 1."""
        return x * self.conv_expand(self.act1(self.conv_reduce(x_se))).sigmoid()


class _ASPPModule(nn.Module):  # the reference's class name
    """Atrous conv (no bias), BN, ReLU."""

    def __init__(self, inplanes: int, planes: int, kernel_size: int, padding: int, dilation: int) -> None:
        super().__init__()
        self.atrous_conv = nn.Conv2d(inplanes, planes, kernel_size, padding=padding, dilation=dilation,
                                     bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPP(nn.Module):
    """Four atrous branches (dilations 1, 6, 12, 18) and a global-pooling branch, fused by a 1x1 conv."""

    def __init__(self, inplanes: int, mid_channels: int) -> None:
        super().__init__()
        self.aspp1 = _ASPPModule(inplanes, mid_channels, 1, padding=0, dilation=1)
        self.aspp2 = _ASPPModule(inplanes, mid_channels, 3, padding=6, dilation=6)
        self.aspp3 = _ASPPModule(inplanes, mid_channels, 3, padding=12, dilation=12)
        self.aspp4 = _ASPPModule(inplanes, mid_channels, 3, padding=18, dilation=18)
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(inplanes, mid_channels, 1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(),
        )
        self.conv1 = nn.Conv2d(mid_channels * 5, inplanes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.global_avg_pool(x)
        # Bilinear upsampling of a 1 x 1 map is a broadcast (and exports without a Resize).
        branches = [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x),
                    pooled.expand(-1, -1, *x.shape[2:])]
        return self.dropout(self.relu(self.bn1(self.conv1(torch.cat(branches, 1)))))


class DepthNet(nn.Module):
    """Image feature + camera-aware vector (+ stereo cost volume) -> depth logits and context feature.

    Args:
        in_channels: Cin of the image features; also the reference's mid_channels (it passes in_channels).
        context_channels: C, the context feature's channels (numC_Trans).
        depth_channels: D, depth bins.
        aspp_mid_channels: channels of each ASPP branch.
        cost_volume_stride: image pixels per cost-volume pixel (4); 0 means no stereo input.
        feature_stride: image pixels per feature pixel (16): the cost volume is brought there by
            log2(feature_stride / cost_volume_stride) stride-2 conv + BN stages (the reference's 2).
    """

    def __init__(self, in_channels: int, context_channels: int, depth_channels: int,
                 aspp_mid_channels: int = 96, cost_volume_stride: int = 4, feature_stride: int = 16) -> None:
        super().__init__()
        mid = in_channels
        self.reduce_conv = nn.Sequential(nn.Conv2d(in_channels, mid, 3, padding=1), nn.BatchNorm2d(mid),
                                         nn.ReLU(inplace=True))
        self.context_conv = nn.Conv2d(mid, context_channels, 1)
        self.bn = nn.BatchNorm1d(MLP_INPUT_SIZE)
        self.depth_mlp = Mlp(MLP_INPUT_SIZE, mid, mid)
        self.depth_se = SELayer(mid)
        self.context_mlp = Mlp(MLP_INPUT_SIZE, mid, mid)
        self.context_se = SELayer(mid)
        self.stereo = cost_volume_stride > 0
        depth_in, downsample = mid, None
        if self.stereo:
            depth_in = mid + depth_channels
            downsample = nn.Conv2d(depth_in, mid, 1)
            stages = round(math.log2(feature_stride / cost_volume_stride))
            layers: list[nn.Module] = []
            for _ in range(stages):
                layers += [nn.Conv2d(depth_channels, depth_channels, 3, stride=2, padding=1),
                           nn.BatchNorm2d(depth_channels)]
            self.cost_volumn_net = nn.Sequential(*layers)
        self.depth_conv = nn.Sequential(
            BasicBlock(depth_in, mid, downsample=downsample),
            BasicBlock(mid, mid),
            BasicBlock(mid, mid),
            ASPP(mid, aspp_mid_channels),
            nn.Conv2d(mid, depth_channels, 1),
        )

    def reduce(self, image_feats: Tensor) -> Tensor:
        """B*N x Cin x fH x fW -> the same after `reduce_conv`: what does not depend on the camera input."""
        return self.reduce_conv(image_feats)

    def forward(self, reduced: Tensor, mlp_input: Tensor, cost: Tensor | None = None,
                ) -> tuple[Tensor, Tensor]:
        """Depth logits B*N x D x fH x fW and context B*N x C x fH x fW.

        Args:
            reduced: `reduce`'s output.
            mlp_input: B x N x 27 (`camera_aware_input`).
            cost: the stereo cost volume after `cost_volumn_net`, B*N x D x fH x fW (stereo nets only).
        """
        camera = self.bn(mlp_input.reshape(-1, MLP_INPUT_SIZE))
        context = self.context_conv(self.context_se(reduced, self.context_mlp(camera)[..., None, None]))
        depth = self.depth_se(reduced, self.depth_mlp(camera)[..., None, None])
        if self.stereo:
            depth = torch.cat([depth, cost], 1)
        return self.depth_conv(depth), context
