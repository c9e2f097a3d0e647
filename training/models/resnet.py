"""ResNet image backbone with mmdet's parameter names, so reference FlashOCC/BEVDet checkpoints load.

The layout (`conv1`, `bn1`, `layer1..4` of blocks with `conv1/bn1/conv2/bn2[/conv3/bn3]` and
`downsample.0/1`) is also torchvision's, so `torchvision://resnet50` weights load too (without `fc`).
Images are B x 3 x H x W; stage i (0-based) has stride 4 * 2**i relative to the image.
"""

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34); `style` has no effect here."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 style: str = "pytorch", with_cp: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def _residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(_maybe_checkpoint(self._residual, x, self.with_cp))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50/101).

    style 'pytorch' strides the 3x3 convolution, 'caffe' the first 1x1, as mmdet does.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 style: str = "pytorch", with_cp: bool = False) -> None:
        super().__init__()
        stride1, stride2 = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def _residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(_maybe_checkpoint(self._residual, x, self.with_cp))


def _maybe_checkpoint(fn: Callable[[Tensor], Tensor], x: Tensor, with_cp: bool) -> Tensor:
    """Recompute `fn` in the backward pass instead of storing its activations (saves memory).

    Only when a gradient flows through x, as mmdet does; inference and export run `fn` directly.
    """
    if with_cp and x.requires_grad and torch.is_grad_enabled():
        return checkpoint(fn, x, use_reentrant=False)
    return fn(x)


ARCH_SETTINGS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """mmdet's `ResNet` backbone without the classifier.

    Args:
        depth: 18, 34, 50 or 101.
        in_channels: image channels.
        stem_channels: channels of the 7x7 stem; defaults to base_channels.
        base_channels: width of the first stage (64 in the reference; smaller for tiny models).
            Stage i outputs base_channels * 2**i * expansion channels.
        num_stages: residual stages built (1..4).
        out_indices: stages whose outputs forward returns, in increasing order.
        style: 'pytorch' (stride on the 3x3 conv) or 'caffe' (stride on the first 1x1).
        frozen_stages: stem and stages 1..frozen_stages are frozen (no gradient, BN in eval mode);
            -1 freezes nothing.
        norm_eval: keep every BatchNorm in eval mode (running statistics fixed) while training.
        with_cp: gradient checkpointing of each block while training.
        zero_init_residual: last BN of each block starts at zero, so blocks start as identities.
    """

    def __init__(self, depth: int, in_channels: int = 3, stem_channels: int | None = None,
                 base_channels: int = 64, num_stages: int = 4, out_indices: Sequence[int] = (0, 1, 2, 3),
                 style: str = "pytorch", frozen_stages: int = -1, norm_eval: bool = True,
                 with_cp: bool = False, zero_init_residual: bool = True) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"depth must be one of {sorted(ARCH_SETTINGS)}, got {depth}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be in 1..4, got {num_stages}")
        if list(out_indices) != sorted(set(out_indices)) or not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(f"out_indices must be increasing stages below {num_stages}: {out_indices}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        block, stage_blocks = ARCH_SETTINGS[depth]
        stem_channels = base_channels if stem_channels is None else stem_channels
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.res_layers: list[str] = []
        stage_channels = []
        inplanes = stem_channels
        for i, num_blocks in enumerate(stage_blocks[:num_stages]):
            planes = base_channels * 2**i
            layer = _make_res_layer(block, inplanes, planes, num_blocks, 1 if i == 0 else 2, style, with_cp)
            inplanes = planes * block.expansion
            stage_channels.append(inplanes)
            self.add_module(f"layer{i + 1}", layer)
            self.res_layers.append(f"layer{i + 1}")
        self.out_channels = [stage_channels[i] for i in self.out_indices]

        self._init_weights(zero_init_residual)
        self._freeze_stages()

    @staticmethod
    def imagenet_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A torchvision ImageNet checkpoint (`resnet50-0676ba61.pth`, what mmcv's `torchvision://resnet50`
        downloads) in this module's names: the same names, less the classifier `fc`."""
        return {key: value for key, value in state.items() if not key.startswith("fc.")}

    def _init_weights(self, zero_init_residual: bool) -> None:
        """mmdet's initialisation when no pretrained weights are given."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_norm.weight)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_stem(self, x: Tensor) -> Tensor:
        """B x 3 x H x W -> B x stem_channels x H/4 x W/4 (7x7 conv, BN, ReLU, max pool)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_first_stage(self, x: Tensor) -> Tensor:
        """B x 3 x H x W -> stage 0 output, B x C0 x H/4 x W/4: what the stereo reference frame needs."""
        return self.layer1(self.forward_stem(x))

    def forward(self, x: Tensor) -> list[Tensor]:
        """B x 3 x H x W -> [B x out_channels[k] x H/2**(i+2) x W/2**(i+2) for i in out_indices]."""
        x = self.forward_stem(x)
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def _make_res_layer(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, num_blocks: int,
                    stride: int, style: str, with_cp: bool) -> nn.Sequential:
    """One stage; the first block strides and projects the identity when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, style, with_cp)]
    layers += [block(planes * block.expansion, planes, 1, None, style, with_cp) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)
