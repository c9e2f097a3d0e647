"""BEVDet's `CustomFPN` image neck: a feature pyramid that returns only the levels listed in `out_ids`.

Parameter names follow mmcv's ConvModule (`lateral_convs.0.conv.weight`, `fpn_convs.0.conv.bias`) so
reference checkpoints load. The reference configs use it without norm or activation, and so do we.
"""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ConvLayer(nn.Module):
    """A biased convolution stored under `.conv`, as mmcv's ConvModule without norm and activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class CustomFPN(nn.Module):
    """Lateral 1x1 convolutions, a nearest-neighbour top-down sum, then 3x3 convolutions on `out_ids`.

    Args:
        in_channels: channels of each input level, finest first (e.g. [1024, 2048] for ResNet-50
            stages 3 and 4).
        out_channels: channels of every lateral and output map.
        num_outs: number of returned maps; must equal len(out_ids) (the reference's extra pooled
            levels are not used by any occupancy config).
        start_level: first input level used.
        end_level: input level after the last one used; -1 means all.
        out_ids: indices of the used levels (counted from start_level) that are returned, increasing.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 end_level: int = -1, out_ids: Sequence[int] = (0,)) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.start_level = start_level
        end = len(self.in_channels) if end_level == -1 else end_level
        if not 0 <= start_level < end <= len(self.in_channels):
            raise ValueError(f"need 0 <= start_level < end_level <= {len(self.in_channels)}, "
                             f"got start_level={start_level}, end_level={end_level}")
        num_levels = end - start_level
        self.out_ids = list(out_ids)
        if self.out_ids != sorted(set(self.out_ids)) or not all(0 <= i < num_levels for i in self.out_ids):
            raise ValueError(f"out_ids must be increasing level indices below {num_levels}: {out_ids}")
        if num_outs != len(self.out_ids):
            raise ValueError(f"num_outs ({num_outs}) must equal len(out_ids) ({len(self.out_ids)})")
        self.lateral_convs = nn.ModuleList(
            ConvLayer(self.in_channels[start_level + i], out_channels, 1) for i in range(num_levels))
        self.fpn_convs = nn.ModuleList(ConvLayer(out_channels, out_channels, 3) for _ in self.out_ids)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """inputs: one B x in_channels[l] x H_l x W_l map per level -> out_channels maps at out_ids."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(inputs)}")
        laterals = [conv(inputs[self.start_level + i]) for i, conv in enumerate(self.lateral_convs)]
        # Top-down: each coarser level, upsampled to the finer level's size, is added to it.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        return [conv(laterals[i]) for conv, i in zip(self.fpn_convs, self.out_ids, strict=True)]
