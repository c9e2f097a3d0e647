"""Named model configs (frozen dataclasses) and the one explicit builder that turns them into modules.

A config holds everything that fixes the network's shape (input size, the pooling grid, the depth
bins and every stage's widths), its losses, and its training recipe. A checkpoint stores its config's
values (`config_to_dict`) and rebuilds its own model from them (`config_from_dict`), even after the
named config was edited. The reference configs mirror FlashOCC's files (named in each entry's
`reference`); parameter counts equal those of models built from the reference code.
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from occupancy.classes import NUM_CLASSES
from occupancy.errors import InputError
from occupancy.grid import OCC3D_GRID, GridSpec
from training.models.bev_encoder import FPN_LSS, LSSFPN3D, CustomResNet, CustomResNet3D
from training.models.fpn import CustomFPN
from training.models.heads import BEVOCCHead2D, BEVOCCHead3D
from training.models.losses import renderocc_class_weights
from training.models.nerf_head import NerfHead, NerfHeadConfig
from training.models.occupancy_model import OccupancyModel
from training.models.render_occ_head import RENDEROCC_TEST_THRESHOLD, RenderOccHead
from training.models.rendering import density_at_voxel_opacity
from training.models.resnet import ResNet
from training.models.stereo import LSSViewTransformerBEVStereo
from training.models.swin import SwinTransformer
from training.models.temporal import BEVStereo4DOCC, RenderOcc
from training.models.view_transformer import DepthBins, LSSViewTransformer, VoxelGridConfig
from training.recipe import DEMO_TINY_2D_RECIPE, DEMO_TINY_4D_STEREO_RECIPE, DEMO_TINY_RECIPE, TrainRecipe


@dataclass(frozen=True)
class ResNetConfig:
    """The image backbone (mmdet ResNet, pytorch style) and its output stages."""

    depth: int = 50
    base_channels: int = 64
    out_indices: tuple[int, ...] = (2, 3)
    with_cp: bool = True  # gradient checkpointing while training: memory for time


@dataclass(frozen=True)
class SwinConfig:
    """BEVDet's Swin Transformer (FlashOCC backbones/swin.py) with its stride-4 stereo output, and the image
    neck the reference pairs with it: FPN_LSS fusing stages 2 and 3 at stride 16 (`neck_channels` wide).
    The defaults are Swin-B at window 12, as FlashOCC's and RenderOcc's 512x1408 configs."""

    embed_dims: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    out_indices: tuple[int, ...] = (2, 3)
    drop_path_rate: float = 0.1
    with_cp: bool = True  # gradient checkpointing while training


@dataclass(frozen=True)
class TemporalConfig:
    """BEVStereo4D (BEVDet dev3.0): the key frame, t-1 fused and t-2 for t-1's cost volume.

    `align_after_view_transformation` is the reference's **test** path: its tools/test.py switches it on
    for model types whose name holds "4D" (FlashOCC's BEVStereo4DOCC) unless --no-aavt; every reference
    config trains without it, and so does ours (the model applies it in eval mode only). The seed's and
    RenderOcc's RenderOcc types have no "4D" and their base class forces it off
    (seed mmdet3d/models/detectors/bevdet_occ.py:237); FlashOCC's 3D-feature config cannot take it
    (`gen_grid` unpacks a 4-D shape, bevdet4d.py:56) and is tested with --no-aavt.
    """

    align_after_view_transformation: bool = False
    pre_process_layers: int = 1  # blocks of `pre_process_net`, the per-frame BEV encoder
    aspp_mid_channels: int = 96  # the depth net's ASPP width (`depthnet_cfg.aspp_mid_channels`)
    outside_bias: float = 5.0  # cost added where a depth hypothesis falls outside (`depthnet_cfg.bias`)


@dataclass(frozen=True)
class RenderOccHeadConfig:
    """The seed's RenderOcc / RenderOcc2D heads (training/models/render_occ_head.py): density ([occupied,
    free]) and semantics (17 classes) per voxel, `final_conv` of `head_channels` (the BEV encoder config's),
    names at the state dict's top level in the temporal models. Their 3D loss (`loss_3d_geo`,
    `loss_3d_sem`) applies where the recipe's supervision has voxel labels.

    Test-time rule: occupied where the occupied score wins (the seed) or exceeds `test_threshold` (pmj's
    RenderOcc, 8.5); there the semantic argmax, else free.
    """

    final_softplus: bool = True
    normalised_class_weights: bool = False  # RenderOcc2D divides its class weights by their sum
    test_threshold: float | None = None


@dataclass(frozen=True)
class BevEncoder2DConfig:
    """FlashOcc's BEV encoder: CustomResNet over the Z-collapsed BEV, FPN_LSS fusing stages 0 and 2,
    and the channel-to-height head BEVOCCHead2D."""

    num_layer: tuple[int, int, int] = (2, 2, 2)
    num_channels: tuple[int, int, int] = (128, 256, 512)
    stride: tuple[int, int, int] = (2, 2, 2)
    neck_channels: int = 256
    extra_upsample: int | None = 2  # FPN_LSS's `up2`: back to the pooled resolution
    head_channels: int = 256  # BEVOCCHead2D out_dim


@dataclass(frozen=True)
class BevEncoder3DConfig:
    """BEVDetOcc's voxel encoder: CustomResNet3D, LSSFPN3D back to the view transformer's width,
    and the voxel head BEVOCCHead3D."""

    num_layer: tuple[int, int, int] = (1, 2, 4)
    num_channels: tuple[int, int, int] = (32, 64, 128)
    stride: tuple[int, int, int] = (1, 2, 2)
    head_channels: int = 32  # BEVOCCHead3D out_dim


@dataclass(frozen=True)
class ModelConfig:
    """One named occupancy model: single-frame, or BEVStereo4D where `temporal` is set."""

    name: str
    description: str
    reference: str  # the config file this mirrors, or "" for our own
    bev_encoder: BevEncoder2DConfig | BevEncoder3DConfig
    input_size: tuple[int, int] = (256, 704)  # (H, W) of the network's input images
    downsample: int = 16
    pool_grid: VoxelGridConfig = field(default_factory=VoxelGridConfig)  # where the view transformer pools
    depth_bins: DepthBins = field(default_factory=DepthBins)
    grid: GridSpec = OCC3D_GRID  # the output grid
    num_classes: int = NUM_CLASSES
    backbone: ResNetConfig | SwinConfig = field(default_factory=ResNetConfig)
    neck_channels: int = 256  # image neck output = view transformer input
    bev_channels: int = 64  # view transformer output per Z slice (the reference's numC_Trans)
    upsample_bev: bool = False  # bilinear x2 before the head (BEVDetOCC's `upsample`)
    class_balance: bool = False
    use_mask: bool = True  # the loss sees only camera-visible voxels (mask_camera); False: all voxels
    scene_class_affinity: bool = False  # MonoScene's sem_scal + geo_scal losses beside the cross-entropy
    depth_loss_weight: float = 0.0  # BEVDepth's loss_depth_weight; 0: no depth supervision
    temporal: TemporalConfig | None = None  # BEVStereo4D: three frames, stereo depth net
    render_occ: RenderOccHeadConfig | None = None  # the seed's RenderOcc heads instead of BEVOCCHead2D/3D
    nerf_head: NerfHeadConfig | None = None  # the rendering head, for supervision from 2D labels (its buffers
    # are in the reference checkpoints); `occ train --supervision 2d` adds one where missing
    recipe: TrainRecipe = field(default_factory=TrainRecipe)  # how `occ train` trains it

    @property
    def history_frames(self) -> int:
        """Frames before the key frame the model sees (t-1 and t-2 for BEVStereo4D)."""
        return 2 if self.temporal else 0


def build_model(config: ModelConfig) -> nn.Module:
    """Builds the modules a config describes, randomly initialised: an OccupancyModel, or for temporal
    configs a BEVStereo4DOCC / RenderOcc."""
    img_backbone, img_neck = _build_image_encoder(config)
    if config.temporal:
        return _build_temporal(config, img_backbone, img_neck)
    is_2d = isinstance(config.bev_encoder, BevEncoder2DConfig)
    view_transformer = LSSViewTransformer(
        grid=config.pool_grid,
        depth_bins=config.depth_bins,
        input_size=config.input_size,
        downsample=config.downsample,
        in_channels=config.neck_channels,
        out_channels=config.bev_channels,
        collapse_z=is_2d,
    )
    build_bev = _build_bev_2d if is_2d else _build_bev_3d
    return OccupancyModel(img_backbone, img_neck, view_transformer, *build_bev(config),
                          upsample_bev=config.upsample_bev, nerf_head=_build_nerf_head(config))


def _build_image_encoder(config: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """Backbone and neck. Temporal models take the backbone's first output as their stereo feature and
    the rest into the neck: ResNet's out_indices start at stage 0; Swin returns it first
    (`return_stereo_feat`) and feeds FPN_LSS."""
    b = config.backbone
    skip = 1 if config.temporal else 0
    if isinstance(b, SwinConfig):
        img_backbone = SwinTransformer(embed_dims=b.embed_dims, window_size=b.window_size, depths=b.depths,
                                       num_heads=b.num_heads, out_indices=b.out_indices,
                                       drop_path_rate=b.drop_path_rate, with_cp=b.with_cp,
                                       return_stereo_feat=bool(config.temporal))
        high, low = img_backbone.out_channels[skip:]
        neck = FPN_LSS(high + low, config.neck_channels, scale_factor=2, input_feature_index=(0, 1),
                       extra_upsample=None)
        return img_backbone, neck
    img_backbone = ResNet(depth=b.depth, out_indices=b.out_indices, frozen_stages=-1, norm_eval=False,
                          with_cp=b.with_cp, base_channels=b.base_channels)
    img_neck = CustomFPN(in_channels=list(img_backbone.out_channels)[skip:],
                         out_channels=config.neck_channels, num_outs=1, start_level=0, out_ids=[0])
    return img_backbone, img_neck


def _build_temporal(config: ModelConfig, img_backbone: nn.Module, img_neck: nn.Module) -> nn.Module:
    """BEVStereo4D: stereo view transformer, per-frame `pre_process_net`, the BEV encoder over two frames."""
    temporal = config.temporal
    is_2d = isinstance(config.bev_encoder, BevEncoder2DConfig)
    if temporal.align_after_view_transformation and not is_2d:
        raise InputError(f"{config.name}: align_after_view_transformation warps 2D BEV maps only (as the "
                         "reference's gen_grid); a 3D voxel encoder cannot take it")
    view_transformer = LSSViewTransformerBEVStereo(
        grid=config.pool_grid, depth_bins=config.depth_bins, input_size=config.input_size,
        downsample=config.downsample, in_channels=config.neck_channels, out_channels=config.bev_channels,
        collapse_z=is_2d, aspp_mid_channels=temporal.aspp_mid_channels, outside_bias=temporal.outside_bias)
    channels = config.bev_channels * (config.pool_grid.shape[2] if is_2d else 1)
    pre_process = (CustomResNet if is_2d else CustomResNet3D)(
        channels, num_layer=(temporal.pre_process_layers,), num_channels=(channels,), stride=(1,))
    backbone, neck, occ_head = (_build_bev_2d if is_2d else _build_bev_3d)(config, frames=2)
    trunk = (img_backbone, img_neck, view_transformer, pre_process, backbone, neck)
    model = RenderOcc if config.render_occ else BEVStereo4DOCC
    return model(*trunk, occ_head=occ_head, nerf_head=_build_nerf_head(config), grid=config.pool_grid,
                 upsample_bev=config.upsample_bev,
                 align_after_view_transformation=temporal.align_after_view_transformation)


def _build_bev_2d(config: ModelConfig, frames: int = 1) -> tuple[CustomResNet, FPN_LSS, nn.Module]:
    """The BEV encoder over `frames` BEV features stacked along channels, and the occupancy head."""
    enc = config.bev_encoder
    pooled_channels = config.bev_channels * config.pool_grid.shape[2]  # Z slices stacked by collapse_z
    backbone = CustomResNet(pooled_channels * frames, num_layer=enc.num_layer, num_channels=enc.num_channels,
                            stride=enc.stride)
    neck = FPN_LSS(in_channels=enc.num_channels[0] + enc.num_channels[2], out_channels=enc.neck_channels,
                   scale_factor=math.prod(enc.stride[1:]), input_feature_index=(0, 2),
                   extra_upsample=enc.extra_upsample)
    if config.render_occ:
        return backbone, neck, _build_render_occ_head(config, enc.neck_channels, dz=config.grid.shape[2])
    head = BEVOCCHead2D(in_dim=enc.neck_channels, out_dim=enc.head_channels, Dz=config.grid.shape[2],
                        num_classes=config.num_classes, class_balance=config.class_balance,
                        use_mask=config.use_mask, scene_class_affinity=config.scene_class_affinity)
    return backbone, neck, head


def _build_bev_3d(config: ModelConfig, frames: int = 1) -> tuple[CustomResNet3D, LSSFPN3D, nn.Module]:
    """The voxel encoder over `frames` voxel features stacked along channels, and the occupancy head."""
    enc = config.bev_encoder
    backbone = CustomResNet3D(config.bev_channels * frames, num_layer=enc.num_layer,
                              num_channels=enc.num_channels, stride=enc.stride)
    neck = LSSFPN3D(in_channels=sum(enc.num_channels), out_channels=config.bev_channels)
    if config.render_occ:
        return backbone, neck, _build_render_occ_head(config, config.bev_channels, dz=None)
    head = BEVOCCHead3D(in_dim=config.bev_channels, out_dim=enc.head_channels, num_classes=config.num_classes,
                        class_balance=config.class_balance, use_mask=config.use_mask,
                        scene_class_affinity=config.scene_class_affinity)
    return backbone, neck, head


def _build_render_occ_head(config: ModelConfig, in_dim: int, dz: int | None) -> RenderOccHead:
    """The RenderOcc head over the encoded feature (`dz` height slices of a BEV map, or None: voxels)."""
    head = config.render_occ
    return RenderOccHead(in_dim=in_dim, out_dim=config.bev_encoder.head_channels, dz=dz,
                         num_classes=config.num_classes, final_softplus=head.final_softplus,
                         class_weights=renderocc_class_weights(head.normalised_class_weights),
                         test_threshold=head.test_threshold)


def _build_nerf_head(config: ModelConfig) -> NerfHead | None:
    return NerfHead(config.nerf_head, config.num_classes - 1) if config.nerf_head else None


# FlashOcc pools into a single 6.4 m slice and recovers height in the head (channel-to-height).
FLASHOCC_POOL_GRID = VoxelGridConfig(z=(-1.0, 5.4, 6.4))
# The seed's M5 network (bevstereo-occ-256x704-2d.py): numC_Trans 80, two pre-process blocks.
SEED_M5 = {
    "backbone": ResNetConfig(out_indices=(0, 2, 3)),
    "bev_channels": 80,
    "pool_grid": FLASHOCC_POOL_GRID,
    "bev_encoder": BevEncoder2DConfig(num_channels=(160, 320, 640)),
    "depth_loss_weight": 0.05,
    "temporal": TemporalConfig(pre_process_layers=2),
}
# The seed's UniOcc-style rendering (renderocc-7frame-256x704*.py): the rendering losses at 0.1 beside the
# 3D loss (`--supervision 3d+2d`), the reference's 38,400 rays per sample.
UNIOCC_RENDERING = {
    "nerf_head": NerfHeadConfig(weight_depth=0.1, weight_semantic=0.1),
    "recipe": TrainRecipe(supervision="3d+2d"),
}
# FlashOCC's and RenderOcc's Swin-B inputs: 512 x 1408 images, a 512-channel FPN_LSS image neck.
SWIN_B_512X1408 = {"input_size": (512, 1408), "backbone": SwinConfig(), "neck_channels": 512,
                   "depth_loss_weight": 0.05}

# Our own: trains on a 2-core CPU in half an hour. Small ImageNet-free ResNet-18 at 128x352
# with stride-8 features (FPN over stages 2-4), 1 m depth bins, a 100x100 BEV at 0.8 m (a
# quarter of the pooling and encoder work); the encoder stays at 100x100 and a bilinear x2
# brings it to the head's 200x200, which keeps FlashOcc's channel-to-height head and the
# Occ3D output grid. Depth-supervised, and with MonoScene's class-affinity loss, without
# which the few object voxels among the free ones are never predicted in a short run.
DEMO_TINY = ModelConfig(
    name="demo-tiny",
    description="small FlashOcc-style model for CPU training, demos and tests (200x200x16 output)",
    reference="",
    input_size=(128, 352),
    downsample=8,
    backbone=ResNetConfig(depth=18, base_channels=32, out_indices=(1, 2, 3), with_cp=False),
    neck_channels=64,
    bev_channels=32,
    pool_grid=VoxelGridConfig(x=(-40.0, 40.0, 0.8), y=(-40.0, 40.0, 0.8), z=(-1.0, 5.4, 6.4)),
    depth_bins=DepthBins(1.0, 45.0, 1.0),
    bev_encoder=BevEncoder2DConfig(num_layer=(1, 1, 1), num_channels=(32, 64, 128), stride=(1, 2, 2),
                                   neck_channels=32, extra_upsample=None, head_channels=32),
    upsample_bev=True,
    class_balance=True,
    scene_class_affinity=True,
    depth_loss_weight=3.0,  # BEVDepth's: sparse depth from the data's labels_2d
    recipe=DEMO_TINY_RECIPE,
)

CONFIGS: dict[str, ModelConfig] = {
    config.name: config
    for config in (
        ModelConfig(
            name="bevdetocc-r50-256x704",
            description="BEVDetOcc: ResNet-50, LSS into 200x200x16 voxels, 3D-conv encoder and voxel head",
            reference="FlashOCC projects/configs/bevdet_occ/bevdet-occ-r50.py",
            bev_encoder=BevEncoder3DConfig(),
            pool_grid=VoxelGridConfig(),
            bev_channels=32,
        ),
        ModelConfig(
            name="flashocc-r50-256x704",
            description="FlashOcc M1: ResNet-50, LSS into a 200x200 BEV, 2D encoder, channel-to-height head",
            reference="FlashOCC projects/configs/flashocc/flashocc-r50.py",
            bev_encoder=BevEncoder2DConfig(),
            pool_grid=FLASHOCC_POOL_GRID,
        ),
        ModelConfig(
            name="flashocc-r50-m0-256x704",
            description="FlashOcc M0: as M1 with 1 m depth bins and a 128-channel BEV neck and head",
            reference="FlashOCC projects/configs/flashocc/flashocc-r50-M0.py",
            bev_encoder=BevEncoder2DConfig(neck_channels=128, head_channels=128),
            pool_grid=FLASHOCC_POOL_GRID,
            depth_bins=DepthBins(1.0, 45.0, 1.0),
        ),
        # BEVStereo4D, the reference's test path per config in TemporalConfig's doc.
        ModelConfig(
            name="renderocc-r50-4d-stereo-256x704",
            description="UniOcc-style: ResNet-50 BEVStereo4D, 3D voxel encoder, density + semantics heads "
                        "and the rendering head",
            reference="seed configs/renderocc/renderocc-7frame-256x704.py (RenderOcc)",
            backbone=ResNetConfig(out_indices=(0, 2, 3)),
            bev_channels=32,
            bev_encoder=BevEncoder3DConfig(),
            depth_loss_weight=0.05,
            temporal=TemporalConfig(),
            render_occ=RenderOccHeadConfig(),
            **UNIOCC_RENDERING,
        ),
        ModelConfig(
            name="flashocc-renderocc-r50-4d-stereo-256x704",
            description="FlashOcc M5: ResNet-50 BEVStereo4D, channel-to-height density + semantics heads and "
                        "the rendering head",
            reference="seed configs/renderocc/renderocc-7frame-256x704-2d.py (RenderOcc2D)",
            **SEED_M5,
            render_occ=RenderOccHeadConfig(normalised_class_weights=True),
            **UNIOCC_RENDERING,
        ),
        ModelConfig(
            name="flashocc-r50-4d-stereo-256x704",
            description="M5 without the rendering head: ResNet-50 BEVStereo4D, channel-to-height heads",
            reference="seed configs/renderocc/renderocc-7frame-wonerfhead-256x704-2d.py (RenderOcc2D)",
            **SEED_M5,
            render_occ=RenderOccHeadConfig(normalised_class_weights=True),
        ),
        ModelConfig(
            name="bevdetocc-stbase-4d-stereo-512x1408",
            description="BEVDetOcc: Swin-B BEVStereo4D, 3D voxel encoder and voxel head",
            reference="FlashOCC projects/configs/bevdet_occ/bevdet-occ-stbase-4d-stereo-512x1408.py",
            **SWIN_B_512X1408,
            bev_channels=32,
            bev_encoder=BevEncoder3DConfig(),
            temporal=TemporalConfig(),  # tested with --no-aavt: its voxel features cannot be shifted
            # 1 sample per GPU on 32 GPUs (the config's comment), lr 2e-4.
            recipe=TrainRecipe(lr=2e-4, batch_size=1),
        ),
        ModelConfig(
            name="flashocc-stbase-4d-stereo-512x1408",
            description="FlashOcc M6: Swin-B BEVStereo4D, 2D encoder, channel-to-height head",
            reference="FlashOCC projects/configs/flashocc/flashocc-stbase-4d-stereo-512x1408_4x4_1e-2.py "
                      "(the seed links a flashocc-stbase-4d-stereo-512x1408.py that exists nowhere)",
            **SWIN_B_512X1408,
            bev_channels=80,
            pool_grid=FLASHOCC_POOL_GRID,
            bev_encoder=BevEncoder2DConfig(num_channels=(160, 320, 640)),
            temporal=TemporalConfig(align_after_view_transformation=True),
            # "4x4": 4 GPUs x 4 samples (its dist_train.sh line).
            recipe=TrainRecipe(global_batch=16),
        ),
        ModelConfig(
            name="renderocc-swinb-4d-stereo-2dgt",
            description="RenderOcc: Swin-B BEVStereo4D, density + semantics heads, trained from 2D labels",
            reference="pmj110119/RenderOcc configs/renderocc/renderocc-7frame.py (RenderOcc)",
            **SWIN_B_512X1408,
            bev_channels=32,
            bev_encoder=BevEncoder3DConfig(),
            temporal=TemporalConfig(),
            render_occ=RenderOccHeadConfig(test_threshold=RENDEROCC_TEST_THRESHOLD),
            nerf_head=NerfHeadConfig(),
            # 2 samples per GPU on 8 GPUs ("Batch Size=16"), 12 epochs, from the 2D labels alone.
            recipe=TrainRecipe(batch_size=2, global_batch=16, max_epochs=12, supervision="2d"),
        ),
        DEMO_TINY,
        # Our own temporal demo: demo-tiny's network as BEVStereo4D (stride-4 ResNet-18 stereo feature,
        # one cost-volume stage down to the stride-8 features, a 32-wide ASPP), on the path that re-lifts
        # t-1 (trained and tested alike), for the synthetic world's 0.5 s keyframes.
        replace(
            DEMO_TINY,
            name="demo-tiny-4d-stereo",
            description="demo-tiny as BEVStereo4D (three keyframes, stereo depth), for CPU training, demos",
            backbone=replace(DEMO_TINY.backbone, out_indices=(0, 1, 2, 3)),
            temporal=TemporalConfig(aspp_mid_channels=32),
            recipe=DEMO_TINY_4D_STEREO_RECIPE,
        ),
    )
}
# demo-tiny's network with the M5 configs' RenderOcc2D head, trained from the 2D labels alone: the
# rendering losses (pmj RenderOcc's 2D-only weights) and the depth net's supervision, no 3D ground truth.
# Its test-time rule thresholds the density (2D labels train only the rendered score): occupied where a
# voxel stops a quarter of the light crossing it. pmj's 8.5 (0.5 % of the light) also counts the
# half-transparent voxels that rays cross before a surface: a voxel grid fitted to a val frame's rays
# scored 10.6 mIoU at 8.5, 13.4 at this 12.7, 12.6 at 13.8 (the best, 13.6, at 12.5).
CONFIGS["demo-tiny-2d"] = replace(
    CONFIGS["demo-tiny"],
    name="demo-tiny-2d",
    description="demo-tiny trained from 2D labels only: density + semantics head, volume rendering",
    class_balance=False,
    scene_class_affinity=False,
    render_occ=RenderOccHeadConfig(test_threshold=density_at_voxel_opacity(0.25)),
    nerf_head=NerfHeadConfig(weight_sky=1.0, weight_surface=1.0, sky_outside_height=True,
                             weight_surface_semantic=1.0),
    recipe=DEMO_TINY_2D_RECIPE,
)


def get_config(name: str) -> ModelConfig:
    """The named config; an unknown name is an InputError that lists the known ones."""
    if name not in CONFIGS:
        raise InputError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


# Stored configs: plain dicts, lists and numbers (what `torch.load(weights_only=True)` reads back). Each
# dataclass value carries its class name under TYPE_KEY, so a field that takes one of several classes
# (`bev_encoder`) decodes unambiguously; only classes the field's annotation names are accepted.
TYPE_KEY = "_type"


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """The config's values as plain containers, nested dataclasses tagged with their class names."""
    return _encode(config)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {TYPE_KEY: type(value).__name__,
                **{f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    return value


def config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Names of the top-level fields in which two configs differ."""
    return [f.name for f in dataclasses.fields(ModelConfig) if getattr(a, f.name) != getattr(b, f.name)]


def config_from_dict(values: Any, source: str = "stored config") -> ModelConfig:
    """The ModelConfig that `config_to_dict` stored; InputError saying which field this code cannot
    build (a field added, removed or retyped since) and why."""
    return _decode(values, ModelConfig, source)


def _decode(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        classes = [option for option in options if dataclasses.is_dataclass(option)]
        if not classes:
            return _decode(value, next(o for o in options if o is not type(None)), where)
        tag = value.get(TYPE_KEY) if isinstance(value, dict) else type(value).__name__
        chosen = [c for c in classes if c.__name__ == tag]
        if not chosen:
            raise InputError(f"{where}: expected a stored {' or '.join(c.__name__ for c in classes)}, found "
                             f"{tag!r}; this code cannot build that model")
        return _decode(value, chosen[0], where)
    if dataclasses.is_dataclass(annotation):
        return _decode_dataclass(value, annotation, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InputError(f"{where}: expected a list, got {value!r}")
        items = typing.get_args(annotation)
        types_ = [items[0]] * len(value) if len(items) == 2 and items[1] is Ellipsis else list(items)
        if len(types_) != len(value):
            raise InputError(f"{where}: expected {len(types_)} values, got {len(value)}")
        return tuple(_decode(item, t, f"{where}[{i}]") for i, (item, t) in enumerate(zip(value, types_,
                                                                                           strict=True)))
    expected = float if annotation is float else annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(expected, type) and not isinstance(value, expected):
        raise InputError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def _decode_dataclass(value: Any, cls: type, where: str) -> Any:
    if not isinstance(value, dict) or value.get(TYPE_KEY) != cls.__name__:
        found = value.get(TYPE_KEY) if isinstance(value, dict) else type(value).__name__
        raise InputError(f"{where}: expected a stored {cls.__name__}, found {found!r}; this code cannot "
                         "build that model")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    stored = {key: item for key, item in value.items() if key != TYPE_KEY}
    unknown = sorted(stored.keys() - fields.keys())
    if unknown:
        raise InputError(f"{where}: {cls.__name__} has no field(s) {', '.join(unknown)} in this code (the "
                         "checkpoint's code had them); this code cannot build that model")
    required = [name for name, f in fields.items() if name not in stored
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise InputError(f"{where}: the stored {cls.__name__} lacks field(s) {', '.join(required)}, which "
                         "this code requires")
    return cls(**{name: _decode(item, hints[name], f"{where}.{name}") for name, item in stored.items()})
