"""Swin Transformer image backbone with the parameter names of BEVDet's/FlashOCC's `SwinTransformer`.

Names follow the reference (mmseg-style) layout, so BEVDet/FlashOCC Swin checkpoints load strictly:
`patch_embed.projection`, `patch_embed.norm`, `stages.i.blocks.j.{norm1, attn.w_msa.qkv, attn.w_msa.proj,
attn.w_msa.relative_position_bias_table, attn.w_msa.relative_position_index, norm2, ffn.layers.0.0,
ffn.layers.1}`, `stages.i.downsample.{norm, reduction}` and one output norm `norm{i}` per out index.

Tokens are B x L x C with L = H * W in row-major order; feature maps returned are B x C x H x W.
Stage i runs at stride patch_size * 2**i with embed_dims * 2**i channels (before its downsample).
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# Added to attention logits between tokens that are not neighbours before the cyclic shift.
MASKED_LOGIT = -100.0


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability drop_prob."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device) < keep_prob
        return x * keep / keep_prob


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size convolution; the image is zero-padded to a patch multiple."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, patch_norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims) if patch_norm else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """B x 3 x H x W -> (B x h*w x C tokens, (h, w)) with h = ceil(H / patch_size)."""
        height, width = x.shape[2:]
        x = F.pad(x, (0, -width % self.patch_size, 0, -height % self.patch_size))
        x = self.projection(x)
        hw_shape = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw_shape


class PatchMerging(nn.Module):
    """Concatenate each stride x stride neighbourhood (zero-padded), normalise, project linearly.

    The concatenation order is nn.Unfold's (channel-major, then row, then column within the
    neighbourhood), which is what the reference's `reduction` weights expect.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, patch_norm: bool) -> None:
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels
        sample_dim = stride * stride * in_channels
        self.norm = nn.LayerNorm(sample_dim) if patch_norm else None
        self.reduction = nn.Linear(sample_dim, out_channels, bias=False)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """B x H*W x C -> (B x h*w x out_channels, (h, w)) with h = ceil(H / stride)."""
        batch, _, channels = x.shape
        height, width = hw_shape
        s = self.stride
        x = x.view(batch, height, width, channels)
        x = F.pad(x, (0, 0, 0, -width % s, 0, -height % s))
        h, w = x.shape[1] // s, x.shape[2] // s
        # B x h x s x w x s x C -> B x h x w x C x s(row) x s(col): nn.Unfold's channel order.
        x = x.view(batch, h, s, w, s, channels).permute(0, 1, 3, 5, 2, 4).reshape(batch, h * w, -1)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x), (h, w)


def relative_position_index(window_size: int) -> Tensor:
    """N x N (N = window_size**2) index into the (2w-1)**2 bias table for each query/key pair.

    index = (dy + w - 1) * (2w - 1) + (dx + w - 1) with (dy, dx) = query minus key position.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # 2 x N, (row, col) of each window position
    delta = (coords[:, :, None] - coords[:, None, :]) + (window_size - 1)  # 2 x N x N
    return delta[0] * (2 * window_size - 1) + delta[1]


class WindowMSA(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B * nW) x N x C window tokens; mask: nW x N x N additive logits or None."""
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).view(windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B * nW) x heads x N x head_dims
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(windows, tokens, channels)
        return self.proj_drop(self.proj(x))


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """B x H x W x C (H, W multiples of window_size) -> (B * nW) x window_size**2 x C, windows row-major."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of window_partition: (B * nW) x window_size**2 x C -> B x H x W x C."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int,
                        device: torch.device) -> Tensor:
    """nW x N x N additive mask for attention in cyclically shifted windows of a padded H x W map.

    After rolling by -shift_size, the last window row/column mixes tokens from up to three original
    regions along each axis; tokens of different regions must not attend to each other.
    """

    def regions(size: int) -> Tensor:
        pos = torch.arange(size, device=device)
        return (pos >= size - window_size).long() + (pos >= size - shift_size).long()

    region = regions(height)[:, None] * 3 + regions(width)[None, :]  # H x W region id
    region = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # nW x N
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASKED_LOGIT)


class ShiftWindowMSA(nn.Module):
    """Window attention over a zero-padded map, cyclically shifted by shift_size when it is > 0."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int, qkv_bias: bool,
                 qk_scale: float | None, attn_drop_rate: float, proj_drop_rate: float,
                 drop_path_rate: float) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, {window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias, qk_scale, attn_drop_rate,
                               proj_drop_rate)
        self.drop = DropPath(drop_path_rate)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        """B x H*W x C -> B x H*W x C."""
        batch, _, channels = x.shape
        height, width = hw_shape
        size, shift = self.window_size, self.shift_size
        # Padded tokens are zeros and, as in the reference, are attended to like any other token.
        x = F.pad(x.view(batch, height, width, channels), (0, 0, 0, -width % size, 0, -height % size))
        padded_h, padded_w = x.shape[1], x.shape[2]
        mask = None
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_h, padded_w, size, shift, x.device).to(x.dtype)
        x = self.w_msa(window_partition(x, size), mask=mask)
        x = window_reverse(x, size, padded_h, padded_w)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :height, :width, :].reshape(batch, height * width, channels)
        return self.drop(x)


class FFN(nn.Module):
    """mmcv's two-layer FFN: `layers.0.0` Linear, GELU, dropout, `layers.1` Linear, dropout."""

    def __init__(self, embed_dims: int, feedforward_channels: int, drop_rate: float,
                 drop_path_rate: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.GELU(), nn.Dropout(drop_rate)),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(drop_rate),
        )
        self.dropout_layer = DropPath(drop_path_rate)

    def forward(self, x: Tensor, identity: Tensor) -> Tensor:
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention and FFN, each with a residual connection."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, window_size: int,
                 shift: bool, qkv_bias: bool, qk_scale: float | None, drop_rate: float, attn_drop_rate: float,
                 drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size, window_size // 2 if shift else 0,
                                   qkv_bias, qk_scale, attn_drop_rate, drop_rate, drop_path_rate)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, feedforward_channels, drop_rate, drop_path_rate)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)


class SwinBlockSequence(nn.Module):
    """One stage: blocks alternating plain and shifted windows, then an optional patch merging."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None, with_cp: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.with_cp = with_cp

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int], Tensor]:
        """B x H*W x C -> (next stage's tokens, their (h, w), this stage's output tokens B x H*W x C)."""
        for block in self.blocks:
            if self.with_cp and x.requires_grad and torch.is_grad_enabled():
                x = checkpoint(block, x, hw_shape, use_reentrant=False)
            else:
                x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x
        x_down, down_hw_shape = self.downsample(x, hw_shape)
        return x_down, down_hw_shape, x


def _tokens_to_map(x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
    """B x H*W x C -> B x C x H x W."""
    return x.view(x.shape[0], hw_shape[0], hw_shape[1], x.shape[2]).permute(0, 3, 1, 2).contiguous()


# Official neighbour k (0: row 0 col 0, 1: row 1 col 0, 2: row 0 col 1, 3: row 1 col 1) for each
# position p = 2 * row + col of nn.Unfold's order.
_OFFICIAL_NEIGHBOUR = [0, 2, 1, 3]


def _unfold_order_columns(weight: Tensor) -> Tensor:
    """out x 4C reduction weight: official column k*C + c -> unfold column c*4 + p."""
    out_channels, in_channels = weight.shape
    grouped = weight.reshape(out_channels, 4, in_channels // 4)[:, _OFFICIAL_NEIGHBOUR]
    return grouped.transpose(1, 2).reshape(out_channels, in_channels)


def _unfold_order_entries(vector: Tensor) -> Tensor:
    """4C norm weight or bias: official entry k*C + c -> unfold entry c*4 + p."""
    return vector.reshape(4, -1)[_OFFICIAL_NEIGHBOUR].transpose(0, 1).reshape(-1)


class SwinTransformer(nn.Module):
    """BEVDet's Swin Transformer backbone (no absolute position embedding: the reference configs turn it off).

    Args:
        in_channels: image channels.
        embed_dims: channels of stage 0; stage i has embed_dims * 2**i.
        patch_size: stride of the patch embedding (must equal strides[0]).
        window_size: attention window side, in tokens.
        mlp_ratio: FFN hidden width over the stage width.
        depths, num_heads: blocks and attention heads per stage.
        strides: patch embedding stride, then the patch merging stride before each later stage.
        out_indices: stages whose (normalised by `norm{i}`) outputs forward returns, increasing.
        qkv_bias, qk_scale: query/key/value bias; logit scale (default head_dims ** -0.5).
        patch_norm: LayerNorm after the patch embedding and in each patch merging.
        drop_rate, attn_drop_rate: dropout on projections/FFN and on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        with_cp: gradient checkpointing of each block while training.
        return_stereo_feat: also return stage 0's un-normalised output first (for BEVStereo4D).
        frozen_stages: as the reference: >= 0 freezes the patch embedding, >= 2 also stages
            0..frozen_stages-2; -1 freezes nothing.
    """

    def __init__(self, in_channels: int = 3, embed_dims: int = 96, patch_size: int = 4, window_size: int = 7,
                 mlp_ratio: int = 4, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24),
                 strides: Sequence[int] = (4, 2, 2, 2), out_indices: Sequence[int] = (0, 1, 2, 3),
                 qkv_bias: bool = True, qk_scale: float | None = None, patch_norm: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 with_cp: bool = True, return_stereo_feat: bool = False, frozen_stages: int = -1) -> None:
        super().__init__()
        num_stages = len(depths)
        if strides[0] != patch_size:
            raise ValueError(f"strides[0] ({strides[0]}) must equal patch_size ({patch_size})")
        if not len(num_heads) == len(strides) == num_stages:
            raise ValueError("depths, num_heads and strides need one entry per stage")
        if list(out_indices) != sorted(set(out_indices)) or not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(f"out_indices must be increasing stages below {num_stages}: {out_indices}")
        self.out_indices = tuple(out_indices)
        self.return_stereo_feat = return_stereo_feat
        self.frozen_stages = frozen_stages
        self.num_features = [embed_dims * 2**i for i in range(num_stages)]

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, patch_norm)
        self.drop_after_pos = nn.Dropout(drop_rate)
        # On the CPU whatever the default device: the rates are Python numbers (also under the meta device).
        block_drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            dims = self.num_features[i]
            first = sum(depths[:i])
            blocks = [
                SwinBlock(dims, num_heads[i], mlp_ratio * dims, window_size, shift=j % 2 == 1,
                          qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
                          attn_drop_rate=attn_drop_rate, drop_path_rate=block_drop_path[first + j])
                for j in range(depth)
            ]
            last = i == num_stages - 1
            downsample = None if last else PatchMerging(dims, 2 * dims, strides[i + 1], patch_norm)
            self.stages.append(SwinBlockSequence(blocks, downsample, with_cp))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.out_channels = [self.num_features[i] for i in self.out_indices]
        if return_stereo_feat:
            self.out_channels.insert(0, self.num_features[0])

        self._init_weights()
        self._freeze_stages()

    @staticmethod
    def imagenet_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """An official ImageNet Swin checkpoint (microsoft/Swin-Transformer layout: `patch_embed.proj`,
        `layers.i.blocks.j.attn.*`, `mlp.fc1/fc2`, `layers.i.downsample.*`, `norm`, `head`) in our (the
        reference's mmseg) names, as BEVDet's `swin_convert` (FlashOCC backbones/swin.py) does it:

        - `layers.` -> `stages.`; `attn.` -> `attn.w_msa.`; `mlp.fc1.` -> `ffn.layers.0.0.`, `mlp.fc2.` ->
          `ffn.layers.1.`; `patch_embed.proj.` -> `patch_embed.projection.`;
        - `downsample.reduction.weight` columns and `downsample.norm.*` entries reordered from the official
          concatenation (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) to nn.Unfold's order;
        - `head.*` dropped. The official final `norm.*` and shifted blocks' `attn_mask` buffers have no
          counterpart here (our outputs have one norm per out index) and stay under their names, for the
          loader to report as unexpected; our `norm{i}` are missing from ImageNet checkpoints.
        """
        converted = {}
        for key, value in state.items():
            if key.startswith("head."):
                continue
            if key.startswith("layers."):
                if "downsample.reduction." in key:
                    value = _unfold_order_columns(value)
                elif "downsample.norm." in key:
                    value = _unfold_order_entries(value)
                key = (key.replace("attn.", "attn.w_msa.").replace("mlp.fc1.", "ffn.layers.0.0.")
                       .replace("mlp.fc2.", "ffn.layers.1.").replace("layers.", "stages.", 1))
            elif key.startswith("patch_embed.proj."):
                key = key.replace("patch_embed.proj.", "patch_embed.projection.", 1)
            converted[key] = value
        return converted

    def _init_weights(self) -> None:
        """The reference's initialisation without pretrained weights (truncated normal, std 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def _frozen_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = [self.patch_embed] if self.frozen_stages >= 0 else []
        return modules + list(self.stages[: max(self.frozen_stages - 1, 0)])

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> "SwinTransformer":
        super().train(mode)
        self._freeze_stages()
        return self

    def forward_first_stage(self, x: Tensor) -> Tensor:
        """B x 3 x H x W -> stage 0's un-normalised output, B x embed_dims x H/4 x W/4 (stereo features)."""
        tokens, hw_shape = self.patch_embed(x)
        _, _, out = self.stages[0](self.drop_after_pos(tokens), hw_shape)
        return _tokens_to_map(out, hw_shape)

    def forward(self, x: Tensor) -> list[Tensor]:
        """B x 3 x H x W -> [B x out_channels[k] x h_i x w_i], h_i = ceil(H / patch_size / 2**i) for a
        stride-2 merging; with return_stereo_feat, stage 0's un-normalised map comes first."""
        x, hw_shape = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            out_hw_shape = hw_shape
            x, hw_shape, out = stage(x, hw_shape)
            if i == 0 and self.return_stereo_feat:
                outs.append(_tokens_to_map(out, out_hw_shape))
            if i in self.out_indices:
                outs.append(_tokens_to_map(getattr(self, f"norm{i}")(out), out_hw_shape))
        return outs

