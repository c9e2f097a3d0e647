"""BEV encoders: residual backbones and upsampling necks over the pooled BEV features.

Names follow FlashOCC (projects/mmdet3d_plugin/models/backbones/resnet.py: CustomResNet,
CustomResNet3D; necks/lss_fpn.py: FPN_LSS, LSSFPN3D) and the mmcv/mmdet building blocks they
use (ConvModule: `conv`, `bn`; mmdet's BasicBlock, shared with the image ResNet), so
reference checkpoints load key for key.

Axes: 2D features are B x C x Y x X, 3D features B x C x Z x Y x X (ego frame).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from training.models.resnet import BasicBlock


class ConvModule(nn.Module):
    """mmcv's ConvModule layout: `conv`, then optional `bn`, then optional ReLU (`activate`).

    Args:
        dims: 2 for Conv2d/BatchNorm2d, 3 for Conv3d/BatchNorm3d.
        norm: add batch norm (the conv then has no bias unless `bias` says so).
        act: add a ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dims: int = 2,
        norm: bool = True,
        act: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        bias = not norm if bias is None else bias
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(out_channels) if norm else None
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class BasicBlock3D(nn.Module):
    """FlashOCC's BasicBlock3D: two 3x3x3 ConvModules plus a shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = ConvModule(in_channels, channels, 3, stride=stride, padding=1, dims=3)
        self.conv2 = ConvModule(channels, channels, 3, padding=1, dims=3, act=False)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


class _ResidualBEVBackbone(nn.Module):
    """Stages of residual blocks, the first of each strided with a shortcut; returns chosen stage outputs.

    Args:
        numC_input: channels of the BEV input.
        num_layer: blocks per stage.
        num_channels: output channels per stage (default numC_input * 2, * 4, * 8).
        stride: stride of each stage's first block.
        backbone_output_ids: stages whose outputs are returned (default all).
        with_cp: gradient checkpointing per stage (only when gradients flow).
    """

    def __init__(
        self,
        numC_input: int,
        num_layer: Sequence[int] = (2, 2, 2),
        num_channels: Sequence[int] | None = None,
        stride: Sequence[int] = (2, 2, 2),
        backbone_output_ids: Sequence[int] | None = None,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        if len(num_layer) != len(stride):
            raise ValueError("num_layer and stride need one entry per stage")
        num_channels = num_channels or [numC_input * 2 ** (i + 1) for i in range(len(num_layer))]
        output_ids = range(len(num_layer)) if backbone_output_ids is None else backbone_output_ids
        self.backbone_output_ids = tuple(output_ids)
        self.out_channels = [num_channels[i] for i in self.backbone_output_ids]
        stages = []
        channels_in = numC_input
        for blocks, channels, step in zip(num_layer, num_channels, stride, strict=True):
            stage = [self.first_block(channels_in, channels, step)]
            stage += [self.block(channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels_in = channels
        self.layers = nn.Sequential(*stages)
        self.with_cp = with_cp

    def first_block(self, in_channels: int, channels: int, stride: int) -> nn.Module:
        raise NotImplementedError

    def block(self, channels: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        recompute = self.with_cp and torch.is_grad_enabled()
        for index, layer in enumerate(self.layers):
            x = checkpoint(layer, x, use_reentrant=False) if recompute else layer(x)
            if index in self.backbone_output_ids:
                feats.append(x)
        return feats


class CustomResNet(_ResidualBEVBackbone):
    """2D residual BEV backbone (FlashOcc's BEV encoder) of mmdet BasicBlocks.

    Input B x numC_input x Y x X; returns B x num_channels[i] x Y/s x X/s per output stage.
    """

    def first_block(self, in_channels: int, channels: int, stride: int) -> nn.Module:
        # The reference's shortcut: a plain strided 3x3 conv with bias and no norm.
        shortcut = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1)
        return BasicBlock(in_channels, channels, stride, shortcut)

    def block(self, channels: int) -> nn.Module:
        return BasicBlock(channels, channels)


class CustomResNet3D(_ResidualBEVBackbone):
    """3D residual BEV backbone (BEVDetOcc's voxel encoder) of BasicBlock3D.

    Input B x numC_input x Z x Y x X; the first block of each stage has a strided 3x3x3
    ConvModule (conv + BN, no ReLU) as `downsample`.
    """

    def first_block(self, in_channels: int, channels: int, stride: int) -> nn.Module:
        shortcut = ConvModule(in_channels, channels, 3, stride=stride, padding=1, dims=3, act=False)
        return BasicBlock3D(in_channels, channels, stride, shortcut)

    def block(self, channels: int) -> nn.Module:
        return BasicBlock3D(channels, channels)


class FPN_LSS(nn.Module):  # the reference's class name
    """Fuses a high-resolution and an upsampled low-resolution BEV level, optionally upsampling again.

    Args:
        in_channels: channels of the two fused levels together.
        out_channels: output channels.
        scale_factor: upsampling of the low-resolution level onto the high-resolution one.
        input_feature_index: (high-res, low-res) indices into the backbone's outputs.
        extra_upsample: a further upsampling factor (`up2`), or None; with it the fusion convs
            run at 2 * out_channels.

    Returns B x out_channels x (Y x X of the high-res level, times extra_upsample).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale_factor: int = 4,
        input_feature_index: tuple[int, int] = (0, 2),
        extra_upsample: int | None = 2,
    ) -> None:
        super().__init__()
        self.input_feature_index = input_feature_index
        self.out_channels = out_channels
        self.up = nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=True)
        mid = out_channels * 2 if extra_upsample else out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
        )
        self.up2 = None
        if extra_upsample:
            self.up2 = nn.Sequential(
                nn.Upsample(scale_factor=extra_upsample, mode="bilinear", align_corners=True),
                nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, kernel_size=1, padding=0),
            )

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        high, low = (feats[i] for i in self.input_feature_index)
        x = self.conv(torch.cat([high, self.up(low)], dim=1))
        return x if self.up2 is None else self.up2(x)


class LSSFPN3D(nn.Module):
    """Fuses three 3D levels (strides 1, 2, 4) at full resolution: trilinear upsampling,
    concatenation, then a 1x1x1 ConvModule to out_channels. Returns B x out_channels x Z x Y x X."""

    def __init__(self, in_channels: int, out_channels: int, with_cp: bool = False) -> None:
        super().__init__()
        self.up1 = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True)
        self.up2 = nn.Upsample(scale_factor=4, mode="trilinear", align_corners=True)
        self.conv = ConvModule(in_channels, out_channels, 1, dims=3)
        self.out_channels = out_channels
        self.with_cp = with_cp

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x_8, x_16, x_32 = feats
        x = torch.cat([x_8, self.up1(x_16), self.up2(x_32)], dim=1)
        if self.with_cp and torch.is_grad_enabled():
            return checkpoint(self.conv, x, use_reentrant=False)
        return self.conv(x)
