"""Image backbones (ResNet, Swin) and the CustomFPN neck: reference parameter names, shapes, behaviour."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.models.fpn import CustomFPN
from training.models.resnet import ResNet
from training.models.swin import (
    PatchMerging,
    ShiftWindowMSA,
    SwinTransformer,
    relative_position_index,
)

SWIN_BASE = dict(embed_dims=128, patch_size=4, window_size=12, mlp_ratio=4, depths=(2, 2, 18, 2),
                 num_heads=(4, 8, 16, 32), strides=(4, 2, 2, 2), out_indices=(2, 3), qkv_bias=True,
                 drop_path_rate=0.1, return_stereo_feat=True)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise_norms(module: nn.Module) -> None:
    """Non-trivial affine and running statistics, so that zero-init residuals do not hide bugs."""
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=gen)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=gen)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = 0.1 * torch.randn(m.running_mean.shape, generator=gen)
            m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=gen)


# ---------------------------------------------------------------- ResNet


@pytest.fixture(scope="module")
def resnet50() -> ResNet:
    """The flashocc-r50 img_backbone."""
    return ResNet(depth=50, num_stages=4, out_indices=(2, 3), frozen_stages=-1, norm_eval=False, with_cp=True,
                  style="pytorch")


def _expected_resnet_keys(blocks: tuple[int, ...], convs: int) -> set[str]:
    """mmdet/torchvision state-dict keys, written out from the naming rules."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight"} | {f"bn1.{s}" for s in bn}
    for stage, count in enumerate(blocks, start=1):
        for b in range(count):
            prefix = f"layer{stage}.{b}"
            for c in range(1, convs + 1):
                keys |= {f"{prefix}.conv{c}.weight"} | {f"{prefix}.bn{c}.{s}" for s in bn}
            if b == 0 and (stage > 1 or convs == 3):
                keys |= {f"{prefix}.downsample.0.weight"} | {f"{prefix}.downsample.1.{s}" for s in bn}
    return keys


def test_resnet50_reference_names_shapes_and_count(resnet50):
    state = resnet50.state_dict()
    assert set(state) == _expected_resnet_keys((3, 4, 6, 3), convs=3)
    assert len(state) == 318  # torchvision's resnet50 has 320 entries, 2 of them the fc layer
    for key in ("layer1.0.conv1.weight", "layer3.5.bn3.running_mean", "layer1.0.downsample.0.weight"):
        assert key in state
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer4.2.conv2.weight"].shape == (512, 512, 3, 3)
    assert _count(resnet50) == 23_508_032  # the reference img_backbone (ResNet-50 without fc)
    assert resnet50.out_channels == [1024, 2048]


def test_resnet18_basic_block_names():
    net = ResNet(depth=18, out_indices=(0, 1, 2, 3))
    assert set(net.state_dict()) == _expected_resnet_keys((2, 2, 2, 2), convs=2)
    assert net.out_channels == [64, 128, 256, 512]
    assert _count(net) == 11_176_512  # torchvision resnet18 (11,689,512) minus its fc (513,000)


def test_resnet50_and_fpn_shapes_at_256x704(resnet50):
    neck = CustomFPN(in_channels=[1024, 2048], out_channels=256, num_outs=1, start_level=0, out_ids=[0])
    resnet50.eval()
    with torch.no_grad():
        feats = resnet50(torch.randn(1, 3, 256, 704))
        out = neck(feats)
    assert [tuple(f.shape) for f in feats] == [(1, 1024, 16, 44), (1, 2048, 8, 22)]
    assert [tuple(o.shape) for o in out] == [(1, 256, 16, 44)]


def test_resnet_with_cp_same_output_and_gradients_and_recomputes():
    torch.manual_seed(0)
    plain = ResNet(depth=50, base_channels=8, out_indices=(1, 3), norm_eval=False, with_cp=False)
    _randomise_norms(plain)
    ckpt = copy.deepcopy(plain)
    for block in ckpt.modules():
        if hasattr(block, "with_cp"):
            block.with_cp = True
    calls = {"n": 0}
    ckpt.layer2[0].conv1.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    x = torch.randn(2, 3, 64, 96)
    outs = []
    for net in (plain, ckpt):
        net.train()
        feats = net(x)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats).backward()
        outs.append((feats, {n: p.grad for n, p in net.named_parameters()}))
    assert calls["n"] == 2  # forward, then recomputed in backward
    for a, b in zip(outs[0][0], outs[1][0], strict=True):
        torch.testing.assert_close(a, b)
    assert outs[0][1].keys() == outs[1][1].keys()
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(grad, outs[1][1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_resnet_frozen_stages_get_no_gradient_and_keep_bn_statistics():
    net = ResNet(depth=18, base_channels=8, out_indices=(3,), frozen_stages=1, norm_eval=False)
    net.train()
    frozen_mean = net.layer1[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))[0].sum().backward()
    for name, param in net.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        assert param.requires_grad is not frozen, name
        assert (param.grad is None) is frozen, name
    assert not net.layer1.training and net.layer2.training
    torch.testing.assert_close(net.layer1[0].bn1.running_mean, frozen_mean)
    assert net.layer2[0].bn1.running_mean.abs().sum() > 0  # trained stages still update statistics


def test_resnet_norm_eval_keeps_running_statistics():
    net = ResNet(depth=18, base_channels=8, norm_eval=True)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=42)
    with pytest.raises(ValueError, match="out_indices"):
        ResNet(depth=18, num_stages=3, out_indices=(3,))


# ---------------------------------------------------------------- CustomFPN


def test_custom_fpn_matches_hand_written_top_down():
    torch.manual_seed(0)
    neck = CustomFPN(in_channels=[6, 10], out_channels=4, num_outs=1, out_ids=[0])
    assert set(neck.state_dict()) == {"lateral_convs.0.conv.weight", "lateral_convs.0.conv.bias",
                                      "lateral_convs.1.conv.weight", "lateral_convs.1.conv.bias",
                                      "fpn_convs.0.conv.weight", "fpn_convs.0.conv.bias"}
    fine, coarse = torch.randn(2, 6, 8, 12), torch.randn(2, 10, 4, 6)
    lat = [neck.lateral_convs[i].conv for i in range(2)]
    top = F.conv2d(coarse, lat[1].weight, lat[1].bias)
    # nearest upsampling by exactly 2: every coarse cell fills a 2 x 2 block
    merged = F.conv2d(fine, lat[0].weight, lat[0].bias) + top.repeat_interleave(2, 2).repeat_interleave(2, 3)
    fpn = neck.fpn_convs[0].conv
    expected = F.conv2d(merged, fpn.weight, fpn.bias, padding=1)
    (out,) = neck([fine, coarse])
    torch.testing.assert_close(out, expected)


def test_custom_fpn_reference_parameter_count():
    neck = CustomFPN(in_channels=[1024, 2048], out_channels=256, num_outs=1, start_level=0, out_ids=[0])
    # 1x1 laterals with bias (ConvModule without norm) and one 3x3 output conv with bias
    assert _count(neck) == (1024 * 256 + 256) + (2048 * 256 + 256) + (256 * 256 * 9 + 256) == 1_377_024


def test_custom_fpn_two_outputs_and_odd_sizes():
    neck = CustomFPN(in_channels=[3, 5, 7], out_channels=4, num_outs=2, out_ids=[0, 1])
    outs = neck([torch.randn(1, 3, 9, 11), torch.randn(1, 5, 5, 6), torch.randn(1, 7, 3, 3)])
    assert [tuple(o.shape) for o in outs] == [(1, 4, 9, 11), (1, 4, 5, 6)]
    with pytest.raises(ValueError, match="num_outs"):
        CustomFPN(in_channels=[3, 5], out_channels=4, num_outs=2, out_ids=[0])


# ---------------------------------------------------------------- Swin


def test_swin_base_reference_names_shapes_and_count():
    net = SwinTransformer(**SWIN_BASE)
    state = net.state_dict()
    per_block = {"norm1.weight", "norm1.bias", "attn.w_msa.relative_position_bias_table",
                 "attn.w_msa.relative_position_index", "attn.w_msa.qkv.weight", "attn.w_msa.qkv.bias",
                 "attn.w_msa.proj.weight", "attn.w_msa.proj.bias", "norm2.weight", "norm2.bias",
                 "ffn.layers.0.0.weight", "ffn.layers.0.0.bias", "ffn.layers.1.weight", "ffn.layers.1.bias"}
    expected = {"patch_embed.projection.weight", "patch_embed.projection.bias", "patch_embed.norm.weight",
                "patch_embed.norm.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias"}
    for i, depth in enumerate(SWIN_BASE["depths"]):
        expected |= {f"stages.{i}.blocks.{j}.{k}" for j in range(depth) for k in per_block}
        if i < 3:
            expected |= {f"stages.{i}.downsample.{k}" for k in ("norm.weight", "norm.bias",
                                                                 "reduction.weight")}
    assert set(state) == expected
    assert state["stages.2.blocks.17.attn.w_msa.relative_position_bias_table"].shape == (23 * 23, 16)
    assert state["stages.0.blocks.1.attn.w_msa.relative_position_index"].shape == (144, 144)
    assert state["stages.0.blocks.0.attn.w_msa.qkv.weight"].shape == (384, 128)
    assert state["stages.0.downsample.reduction.weight"].shape == (256, 512)
    assert state["stages.3.blocks.1.ffn.layers.0.0.weight"].shape == (4096, 1024)
    assert net.out_channels == [128, 512, 1024]
    # Official Swin-B (87,768,224 with window 7) minus head (1,025,000) and final norm (2,048), plus
    # the larger window-12 bias tables (376 heads x (529 - 169)) and the norm2/norm3 output norms.
    assert _count(net) == 87_768_224 - 1_025_000 - 2_048 + 376 * 360 + 2 * 512 + 2 * 1024 == 86_879_608


def test_relative_position_index_brute_force():
    w = 3
    index = relative_position_index(w)
    for a in range(w * w):
        for b in range(w * w):
            dy, dx = a // w - b // w, a % w - b % w
            assert index[a, b] == (dy + w - 1) * (2 * w - 1) + (dx + w - 1)


def test_patch_merging_uses_unfold_channel_order():
    torch.manual_seed(0)
    merge = PatchMerging(in_channels=3, out_channels=5, stride=2, patch_norm=False)
    x = torch.randn(2, 3, 5, 7)  # odd sizes: zero-padded to 6 x 8
    tokens, hw = merge(x.flatten(2).transpose(1, 2), (5, 7))
    unfolded = F.unfold(F.pad(x, (0, 1, 0, 1)), kernel_size=2, stride=2).transpose(1, 2)
    assert hw == (3, 4)
    torch.testing.assert_close(tokens, merge.reduction(unfolded))


def _brute_force_shift_window_attention(msa: ShiftWindowMSA, x: torch.Tensor,
                                        hw: tuple[int, int]) -> torch.Tensor:
    """Full-map attention where each token sees only tokens of its own (shifted) window and region."""
    w, s = msa.window_size, msa.shift_size
    attn_mod = msa.w_msa
    height, width = hw
    ph, pw = -(-height // w) * w, -(-width // w) * w
    grid = F.pad(x.view(1, height, width, -1), (0, 0, 0, pw - width, 0, ph - height))
    out = torch.zeros_like(grid)
    table = attn_mod.relative_position_bias_table
    qkv = attn_mod.qkv(grid)
    q, k, v = qkv.chunk(3, dim=-1)
    heads = attn_mod.num_heads
    hd = q.shape[-1] // heads

    def region(pos, size):  # region along one axis of the rolled map
        return 0 if pos < size - w else (1 if pos < size - s else 2)

    for y in range(ph):
        for xx in range(pw):
            # (y, xx) is a position in the rolled map; it holds original token ((y+s)%ph, (xx+s)%pw)
            oy, ox = (y + s) % ph, (xx + s) % pw
            logits, values = [], []
            for y2 in range((y // w) * w, (y // w) * w + w):
                for x2 in range((xx // w) * w, (xx // w) * w + w):
                    oy2, ox2 = (y2 + s) % ph, (x2 + s) % pw
                    if s and (region(y, ph), region(xx, pw)) != (region(y2, ph), region(x2, pw)):
                        continue
                    bias = table[(y - y2 + w - 1) * (2 * w - 1) + (xx - x2 + w - 1)]
                    qh = q[0, oy, ox].view(heads, hd) * attn_mod.scale
                    kh = k[0, oy2, ox2].view(heads, hd)
                    logits.append((qh * kh).sum(-1) + bias)
                    values.append(v[0, oy2, ox2].view(heads, hd))
            weights = torch.stack(logits).softmax(0)  # n x heads
            out[0, oy, ox] = attn_mod.proj((weights[..., None] * torch.stack(values)).sum(0).reshape(-1))
    return out[:, :height, :width].reshape(1, height * width, -1)


@pytest.mark.parametrize("shift", [0, 2])
def test_shift_window_attention_matches_brute_force(shift):
    torch.manual_seed(0)
    msa = ShiftWindowMSA(embed_dims=8, num_heads=2, window_size=4, shift_size=shift, qkv_bias=True,
                         qk_scale=None, attn_drop_rate=0.0, proj_drop_rate=0.0, drop_path_rate=0.0).eval()
    nn.init.normal_(msa.w_msa.relative_position_bias_table)
    hw = (6, 7)  # padded to 8 x 8: two windows per axis, padding inside the shifted windows
    x = torch.randn(1, hw[0] * hw[1], 8)
    with torch.no_grad():
        torch.testing.assert_close(msa(x, hw), _brute_force_shift_window_attention(msa, x, hw),
                                   rtol=1e-4, atol=1e-5)


def _tiny_swin(**kwargs) -> SwinTransformer:
    args = dict(embed_dims=16, window_size=4, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.0)
    return SwinTransformer(**(args | kwargs))


def test_swin_padding_path_shapes():
    net = _tiny_swin(out_indices=(0, 1, 2, 3), return_stereo_feat=True).eval()
    with torch.no_grad():
        outs = net(torch.randn(2, 3, 70, 90))  # 18 x 23 tokens (70 padded to 72): no window multiple
    # stage i: ceil(18 / 2**i) x ceil(23 / 2**i)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 18, 23), (2, 16, 18, 23), (2, 32, 9, 12), (2, 64, 5, 6),
                                              (2, 128, 3, 3)]
    assert net.out_channels == [16, 16, 32, 64, 128]
    with torch.no_grad():
        torch.testing.assert_close(net.forward_first_stage(torch.ones(1, 3, 70, 90)),
                                   net(torch.ones(1, 3, 70, 90))[0])
    assert all(torch.isfinite(o).all() for o in outs)


def test_swin_with_cp_same_output_and_gradients():
    torch.manual_seed(0)
    plain = _tiny_swin(out_indices=(2, 3), with_cp=False)
    ckpt = copy.deepcopy(plain)
    for stage in ckpt.stages:
        stage.with_cp = True
    x = torch.randn(1, 3, 48, 80)
    results = []
    for net in (plain, ckpt):
        net.train()
        feats = net(x)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in feats).backward()
        results.append((feats, {n: p.grad for n, p in net.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(a, b)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_swin_frozen_stages_follow_reference():
    net = _tiny_swin(out_indices=(3,), frozen_stages=2, with_cp=False)
    net.train()
    net(torch.randn(1, 3, 32, 32))[0].sum().backward()
    for name, param in net.named_parameters():
        frozen = name.startswith(("patch_embed.", "stages.0."))
        assert (param.grad is None) is frozen, name
    assert not net.stages[0].training and net.stages[1].training
