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

from occupancy.classes import NUM_CLASSES
from occupancy.errors import InputError
from occupancy.grid import OCC3D_GRID, GridSpec
from training.models.bev_encoder import FPN_LSS, LSSFPN3D, CustomResNet, CustomResNet3D
from training.models.density_heads import DensityHeadConfig, RenderOcc2DHead
from training.models.fpn import CustomFPN
from training.models.heads import BEVOCCHead2D, BEVOCCHead3D
from training.models.occupancy_model import OccupancyModel
from training.models.rendering import NerfHead, RenderConfig, density_at_voxel_opacity
from training.models.resnet import ResNet
from training.models.view_transformer import DepthBins, LSSViewTransformer, VoxelGridConfig
from training.recipe import DEMO_TINY_2D_RECIPE, DEMO_TINY_RECIPE, TrainRecipe


@dataclass(frozen=True)
class ResNetConfig:
    """The image backbone (mmdet ResNet, pytorch style) and its output stages."""

    depth: int = 50
    base_channels: int = 64
    out_indices: tuple[int, ...] = (2, 3)
    with_cp: bool = True  # gradient checkpointing while training: memory for time


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
    """One named single-frame occupancy model."""

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
    backbone: ResNetConfig = field(default_factory=ResNetConfig)
    neck_channels: int = 256  # CustomFPN output = view transformer input
    bev_channels: int = 64  # view transformer output per Z slice (the reference's numC_Trans)
    upsample_bev: bool = False  # bilinear x2 before the head (BEVDetOCC's `upsample`)
    class_balance: bool = False
    use_mask: bool = True  # the loss sees only camera-visible voxels (mask_camera); False: all voxels
    scene_class_affinity: bool = False  # MonoScene's sem_scal + geo_scal losses beside the cross-entropy
    depth_loss_weight: float = 0.0  # BEVDepth's loss_depth_weight; 0: no depth supervision
    density_head: DensityHeadConfig | None = None  # RenderOcc2D's density + semantics head in place of
    # BEVOCCHead2D (2D BEV encoders)
    render: RenderConfig | None = None  # the rendering head (`nerf_head`) for 2D-label supervision
    recipe: TrainRecipe = field(default_factory=TrainRecipe)  # how `occ train` trains it


def build_model(config: ModelConfig) -> OccupancyModel:
    """Builds the modules a config describes, randomly initialised."""
    b = config.backbone
    img_backbone = ResNet(depth=b.depth, out_indices=b.out_indices, frozen_stages=-1, norm_eval=False,
                          with_cp=b.with_cp, base_channels=b.base_channels)
    img_neck = CustomFPN(in_channels=list(img_backbone.out_channels), out_channels=config.neck_channels,
                         num_outs=1, start_level=0, out_ids=[0])
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
    nerf_head = NerfHead(config.grid, config.render, config.num_classes - 1) if config.render else None
    return OccupancyModel(img_backbone, img_neck, view_transformer, *build_bev(config),
                          upsample_bev=config.upsample_bev, nerf_head=nerf_head)


def _build_bev_2d(config: ModelConfig) -> tuple[CustomResNet, FPN_LSS, BEVOCCHead2D | RenderOcc2DHead]:
    enc = config.bev_encoder
    pooled_channels = config.bev_channels * config.pool_grid.shape[2]  # Z slices stacked by collapse_z
    backbone = CustomResNet(pooled_channels, num_layer=enc.num_layer, num_channels=enc.num_channels,
                            stride=enc.stride)
    neck = FPN_LSS(in_channels=enc.num_channels[0] + enc.num_channels[2], out_channels=enc.neck_channels,
                   scale_factor=math.prod(enc.stride[1:]), input_feature_index=(0, 2),
                   extra_upsample=enc.extra_upsample)
    if config.density_head:
        return backbone, neck, RenderOcc2DHead(enc.neck_channels, config.grid.shape[2], config.num_classes,
                                               config.density_head, use_mask=config.use_mask)
    head = BEVOCCHead2D(in_dim=enc.neck_channels, out_dim=enc.head_channels, Dz=config.grid.shape[2],
                        num_classes=config.num_classes, class_balance=config.class_balance,
                        use_mask=config.use_mask, scene_class_affinity=config.scene_class_affinity)
    return backbone, neck, head


def _build_bev_3d(config: ModelConfig) -> tuple[CustomResNet3D, LSSFPN3D, BEVOCCHead3D]:
    if config.density_head:
        raise ValueError(f"{config.name}: the RenderOcc2D density head reads a 2D BEV feature")
    enc = config.bev_encoder
    backbone = CustomResNet3D(config.bev_channels, num_layer=enc.num_layer, num_channels=enc.num_channels,
                              stride=enc.stride)
    neck = LSSFPN3D(in_channels=sum(enc.num_channels), out_channels=config.bev_channels)
    head = BEVOCCHead3D(in_dim=config.bev_channels, out_dim=enc.head_channels, num_classes=config.num_classes,
                        class_balance=config.class_balance, use_mask=config.use_mask,
                        scene_class_affinity=config.scene_class_affinity)
    return backbone, neck, head


# FlashOcc pools into a single 6.4 m slice and recovers height in the head (channel-to-height).
FLASHOCC_POOL_GRID = VoxelGridConfig(z=(-1.0, 5.4, 6.4))

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
        # Our own: trains on a 2-core CPU in half an hour. Small ImageNet-free ResNet-18 at 128x352
        # with stride-8 features (FPN over stages 2-4), 1 m depth bins, a 100x100 BEV at 0.8 m (a
        # quarter of the pooling and encoder work); the encoder stays at 100x100 and a bilinear x2
        # brings it to the head's 200x200, which keeps FlashOcc's channel-to-height head and the
        # Occ3D output grid. Depth-supervised, and with MonoScene's class-affinity loss, without
        # which the few object voxels among the free ones are never predicted in a short run.
        ModelConfig(
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
        ),
    )
}
# demo-tiny's network with RenderOcc2D's density + semantics head, trained from the 2D labels alone:
# the rendering losses (pmj RenderOcc's 2D-only weights) and the depth net's supervision, no 3D ground
# truth. Its test-time rule thresholds the density (2D labels train only the rendered channel): occupied
# where a voxel stops a quarter of the light crossing it. pmj's 8.5 (0.5 % of the light) also counts
# the half-transparent voxels that rays cross before a surface: a voxel grid fitted to a val frame's rays
# scored 10.6 mIoU at 8.5, 13.4 at this 12.7, 12.6 at 13.8 (the best, 13.6, at 12.5).
CONFIGS["demo-tiny-2d"] = replace(
    CONFIGS["demo-tiny"],
    name="demo-tiny-2d",
    description="demo-tiny trained from 2D labels only: density + semantics head, volume rendering",
    class_balance=False,
    scene_class_affinity=False,
    density_head=DensityHeadConfig(out_dim=32, density_threshold=density_at_voxel_opacity(0.25)),
    render=RenderConfig(),
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
