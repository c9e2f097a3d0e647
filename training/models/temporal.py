"""BEVStereo4D occupancy models: BEVDet dev3.0's `BEVStereo4D` (FlashOCC
projects/mmdet3d_plugin/models/detectors/bevstereo4d.py) with the occupancy heads of FlashOCC's
`BEVStereo4DOCC` and of the seed's / RenderOcc's `RenderOcc` and `RenderOcc2D`, as plain modules.

Three keyframes: the key frame t, t-1 whose BEV feature is fused with t's, and t-2, whose stride-4
stereo feature only serves t-1's cost volume (`multi_adj_frame_id_cfg = (1, 2, 1)`,
`extra_ref_frames = 1`). Every frame's depth net takes the key frame's camera-aware input. How t-1
reaches t's ego frame is the test path of the reference (docs in ModelConfig.temporal):
- lifted with its own cameras in t's ego (`sensor2keyego`), or
- `align_after_view_transformation`: lifted with t's cameras, then its BEV map warped by the key
  camera's motion (`shift_feature`); the reference trains without it and its test script switches it
  on for "4D" model types, so here it applies in eval mode only.

Each frame's work is a method of its own (`encode_frame`, `stereo_feature`, `reduce`, `stereo_cost`,
`frame_bev`, `fuse`), so `forward` (three frames at once: training, evaluation, export) and `stream`
(one frame and the state of the frames before it) run the same arithmetic.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.batch import CameraBatch, OccupancyTargets, RayBatch
from training.models.depth_net import camera_aware_input
from training.models.nerf_head import NerfHead
from training.models.render_occ_head import DensitySemantics, RenderOccHead
from training.models.stereo import LSSViewTransformerBEVStereo
from training.models.view_transformer import VoxelGridConfig, inverse_3x3


def invert_affine(matrix: Tensor) -> Tensor:
    """Inverse of ... x 4 x 4 affine transforms [[M, t], [0, 1]]: [[M^-1, -M^-1 t], [0, 1]] (exportable)."""
    rotation = inverse_3x3(matrix[..., :3, :3])
    translation = -(rotation @ matrix[..., :3, 3:])
    top = torch.cat([rotation, translation], -1)
    return torch.cat([top, matrix[..., 3:, :]], -2)


def camera_to_previous(curr2key: Tensor, prev2key: Tensor) -> Tensor:
    """Each camera of the current frame -> the same camera in the previous one, B x N x 4 x 4: the
    reference's `curr2adjsensor`, from both frames' cameras in the key ego."""
    return invert_affine(prev2key) @ curr2key


def shift_feature(bev: Tensor, key_camera: Tensor, adjacent_camera: Tensor, bda: Tensor,
                  grid: VoxelGridConfig) -> Tensor:
    """BEVDet4D's `shift_feature`: the adjacent frame's BEV map, lifted with the key frame's cameras,
    warped into the key frame's ego by the motion of the first camera (CAM_FRONT_LEFT).

    Args:
        bev: B x C x Y x X (the reference's `gen_grid` takes 2D maps only).
        key_camera, adjacent_camera: B x 4 x 4, the first camera of the key and of the adjacent frame
            in the key ego.
        bda: B x 3 x 3 BEV augmentation, applied to both.
        grid: the BEV grid (cell size and lower bounds of x and y).

    In float32, as the reference's `@force_fp32`.
    """
    bev, key_camera, adjacent_camera, bda = (t.float() for t in (bev, key_camera, adjacent_camera, bda))
    b, _, size_y, size_x = bev.shape
    # [[bda, 0], [0, 1]]; the last row of any affine transform is [0, 0, 0, 1].
    bda4 = torch.cat([torch.cat([bda, bda.new_zeros(b, 3, 1)], -1), key_camera[:, 3:]], -2)
    keyego2adjego = (bda4 @ key_camera) @ invert_affine(bda4 @ adjacent_camera)
    planar = keyego2adjego[:, [0, 1, 3]][:, :, [0, 1, 3]]  # x, y and the translation; z dropped
    (x0, _, vx), (y0, _, vy) = grid.x, grid.y
    feat2bev = bev.new_tensor([[vx, 0.0, x0], [0.0, vy, y0], [0.0, 0.0, 1.0]])
    bev2feat = bev.new_tensor([[1 / vx, 0.0, -x0 / vx], [0.0, 1 / vy, -y0 / vy], [0.0, 0.0, 1.0]])
    tf = bev2feat @ planar @ feat2bev  # B x 3 x 3: key-frame cell -> adjacent-map cell
    ys, xs = torch.meshgrid(torch.arange(size_y, dtype=bev.dtype, device=bev.device),
                            torch.arange(size_x, dtype=bev.dtype, device=bev.device), indexing="ij")
    tf = tf[:, None, None]
    u = tf[..., 0, 0] * xs + tf[..., 0, 1] * ys + tf[..., 0, 2]
    v = tf[..., 1, 0] * xs + tf[..., 1, 1] * ys + tf[..., 1, 2]
    sample = torch.stack((u / (size_x - 1.0) * 2.0 - 1.0, v / (size_y - 1.0) * 2.0 - 1.0), -1)
    return F.grid_sample(bev, sample, mode="bilinear", padding_mode="zeros", align_corners=True)


def _first_level(x: Tensor | list[Tensor]) -> Tensor:
    """The image neck's output map: CustomFPN returns a list, FPN_LSS a tensor (as the reference takes it)."""
    return x[0] if isinstance(x, list | tuple) else x


@dataclass
class StreamState:
    """What frame t needs of frame t-1 (and, through it, of t-2) to equal the offline three-frame forward.

    Shapes: B*N cameras; Cs x h x w the stride-4 stereo feature; Cin x fH x fW the image features; D bins.
    """

    stereo: Tensor  # B*N x Cs x h x w: t-1's stereo feature, which t's cost volume matches against
    reduced: Tensor  # B*N x Cin x fH x fW: t-1's depth-net input after `reduce_conv`
    cost: Tensor  # B*N x D x fH x fW: t-1's cost volume against t-2, after `cost_volumn_net`
    history: Tensor  # B int64: the real past frames t-1 itself used (0: a cold start, so `cost` matched it
    # against itself); the next frame's history is one more, at most MAX_HISTORY


MAX_HISTORY = 2  # t-1 and t-2


def _per_camera(mask: Tensor, cameras: int) -> Tensor:
    """A per-frame B mask as B*N x 1 x 1 x 1, to select between B*N-first tensors."""
    return mask[:, None].expand(-1, cameras).reshape(-1, 1, 1, 1)


class BEVStereo4D(nn.Module):
    """The BEVStereo4D trunk: three frames -> the fused, encoded BEV feature; heads come from subclasses.

    Args:
        img_backbone: B*N x 3 x H x W -> [stride-4 stereo feature, the levels the neck takes...];
            `forward_first_stage` gives the stereo feature alone.
        img_neck: those levels -> B*N x Cin x fH x fW (CustomFPN, FPN_LSS).
        img_view_transformer: LSSViewTransformerBEVStereo.
        pre_process_net: per-frame BEV encoder before the fusion (CustomResNet / CustomResNet3D).
        img_bev_encoder_backbone, img_bev_encoder_neck: over the two frames' BEV features, [t-1, t].
        align_after_view_transformation: the reference test path (eval mode only; see the module doc).
        grid: the view transformer's pooling grid (for `shift_feature`).
        upsample_bev: double the encoded feature's resolution (bilinear) before the head, as
            OccupancyModel's option (our demo's encoder runs at half the output resolution).
    """

    def __init__(self, img_backbone: nn.Module, img_neck: nn.Module,
                 img_view_transformer: LSSViewTransformerBEVStereo, pre_process_net: nn.Module,
                 img_bev_encoder_backbone: nn.Module, img_bev_encoder_neck: nn.Module, grid: VoxelGridConfig,
                 upsample_bev: bool = False, align_after_view_transformation: bool = False) -> None:
        super().__init__()
        self.img_backbone = img_backbone
        self.img_neck = img_neck
        self.img_view_transformer = img_view_transformer
        self.pre_process_net = pre_process_net
        self.img_bev_encoder_backbone = img_bev_encoder_backbone
        self.img_bev_encoder_neck = img_bev_encoder_neck
        self.grid = grid
        self.upsample_bev = upsample_bev
        self.align_after_view_transformation = align_after_view_transformation

    # --- one frame ---------------------------------------------------------------------------------
    def encode_frame(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """B x N x 3 x H x W -> (image features B x N x Cin x fH x fW, stereo B*N x Cs x H/4 x W/4)."""
        b, n = images.shape[:2]
        stereo, *levels = self.img_backbone(images.flatten(0, 1))
        feats = _first_level(self.img_neck(levels))
        return feats.view(b, n, *feats.shape[1:]), stereo

    def stereo_feature(self, images: Tensor) -> Tensor:
        """B x N x 3 x H x W -> the stride-4 stereo feature alone, B*N x Cs x H/4 x W/4 (frame t-2)."""
        return self.img_backbone.forward_first_stage(images.flatten(0, 1))

    def reduce(self, feats: Tensor) -> Tensor:
        """B x N x Cin x fH x fW -> the depth net's `reduce_conv` output, B*N x Cin x fH x fW."""
        return self.img_view_transformer.depth_net.reduce(feats.flatten(0, 1))

    def stereo_cost(self, curr: Tensor, prev: Tensor, curr2key: Tensor, prev2key: Tensor, batch: CameraBatch,
                    ) -> Tensor:
        """`curr`'s cost volume against `prev` (stereo features of two frames whose cameras sit at
        `curr2key`, `prev2key`, B x N x 4 x 4, in the key ego), after `cost_volumn_net`."""
        curr2prev = camera_to_previous(curr2key, prev2key)
        return self.img_view_transformer.stereo_cost(curr, prev, curr2prev, batch)

    def frame_bev(self, reduced: Tensor, cost: Tensor, mlp_input: Tensor, lifting: CameraBatch,
                  ) -> tuple[Tensor, Tensor]:
        """One frame's BEV feature after `pre_process_net`, and its depth probabilities B x N x D x fH x fW.

        `lifting.sensor2ego` places the frustum (the frame's own cameras in the key ego, or the key
        frame's under align_after_view_transformation); `mlp_input` is always the key frame's.
        """
        depth, context = self.img_view_transformer.depth_and_context(reduced, mlp_input, cost)
        bev = self.img_view_transformer.splat(depth, context, lifting)
        return self.pre_process_net(bev)[0], depth

    def fuse(self, bev_prev: Tensor, bev_key: Tensor, prev2key: Tensor, batch: CameraBatch) -> Tensor:
        """[t-1, t] BEV features -> the encoded BEV feature the head reads."""
        if self._aligns_after():
            bev_prev = shift_feature(bev_prev, batch.sensor2ego[:, 0], prev2key[:, 0], batch.bda, self.grid)
        bev = _first_level(self.img_bev_encoder_neck(self.img_bev_encoder_backbone(
            torch.cat([bev_prev, bev_key], 1))))
        if self.upsample_bev:
            bev = F.interpolate(bev, scale_factor=2, mode="bilinear", align_corners=True)
        return bev

    def _aligns_after(self) -> bool:
        return self.align_after_view_transformation and not self.training

    def _lifting(self, batch: CameraBatch, frame2key: Tensor) -> CameraBatch:
        """The geometry a history frame is lifted with: its own cameras, or the key frame's (aavt)."""
        return batch if self._aligns_after() else replace(batch, sensor2ego=frame2key, history=None)

    # --- three frames at once ----------------------------------------------------------------------
    def forward_bev(self, batch: CameraBatch) -> tuple[Tensor, Tensor]:
        """The encoded BEV feature of the key frame and its depth probabilities (for depth supervision).

        As the reference: t-2 then t-1 without gradients (their batch norms still update in training),
        then t; `batch.history` holds t-1 and t-2.
        """
        if batch.history is None or batch.history.images.shape[1] < 2:
            raise ValueError("a BEVStereo4D model needs the two frames before the key frame (batch.history)")
        history = batch.history
        prev2key, prev22key = history.sensor2keyego[:, 0], history.sensor2keyego[:, 1]
        mlp_input = camera_aware_input(batch.sensor2ego, batch.intrinsics, batch.post_rots, batch.post_trans,
                                       batch.bda)
        with torch.no_grad():
            stereo_prev2 = self.stereo_feature(history.images[:, 1])
            feats_prev, stereo_prev = self.encode_frame(history.images[:, 0])
            cost_prev = self.stereo_cost(stereo_prev, stereo_prev2, prev2key, prev22key, batch)
            bev_prev, _ = self.frame_bev(self.reduce(feats_prev), cost_prev, mlp_input,
                                         self._lifting(batch, prev2key))
        feats, stereo = self.encode_frame(batch.images)
        cost = self.stereo_cost(stereo, stereo_prev, batch.sensor2ego, prev2key, batch)
        bev_key, depth = self.frame_bev(self.reduce(feats), cost, mlp_input, batch)
        return self.fuse(bev_prev, bev_key, prev2key, batch), depth

    # --- one frame at a time -----------------------------------------------------------------------
    def stream_bev(self, batch: CameraBatch, state: StreamState | None, prev2key: Tensor | None,
                   ) -> tuple[Tensor, Tensor, StreamState]:
        """`forward_bev` of the frame and the two before it, from this frame and the state of the last.

        Args:
            batch: the current frame (its `history` is not used).
            state: what the previous step returned; None on a sequence's first frame (cold start: the
                reference repeats the current frame as its history).
            prev2key: B x N x 4 x 4, the previous frame's cameras in this frame's ego; None with `state`.
        """
        if (state is None) != (prev2key is None):
            raise ValueError("stream: pass the previous frame's cameras exactly when passing a state")
        if state is None:
            history = torch.zeros(batch.images.shape[0], dtype=torch.long, device=batch.images.device)
            return self.stream_step(batch, batch.sensor2ego, history, None)
        return self.stream_step(batch, prev2key, (state.history + 1).clamp(max=MAX_HISTORY), state)

    def stream_step(self, batch: CameraBatch, prev2key: Tensor, history: Tensor, state: StreamState | None,
                    ) -> tuple[Tensor, Tensor, StreamState]:
        """One step of a sequence with the history as a tensor, per frame of the batch (what the exported
        graph runs): the encoded BEV feature, the key frame's depth and this frame's state.

        Args:
            batch: the current frame.
            prev2key: B x N x 4 x 4, the previous frame's cameras in this frame's ego (read: history >= 1).
            history: B, the real past frames this frame uses: 0 none (the frame stands in for t-1 and t-2,
                as the dataset repeats it at a scene start), 1 (t-1; the reference's t-2 is then this frame,
                so t-1's cost volume is matched against this frame here), 2.
            state: the previous frame's; read where history >= 1 (None: no frame of the batch has one).

        The branches are selected per frame with `torch.where`, so every branch computes what the offline
        forward does on its frames: with history 0 the re-matched cost volume below is this frame's own
        (the same call on the same values), with history 1 it is t-1 against t, with 2 the state's is used.
        """
        key2key = batch.sensor2ego
        cameras = batch.images.shape[1]
        prev2key = torch.where((history >= 1).view(-1, 1, 1, 1), prev2key, key2key)
        mlp_input = camera_aware_input(key2key, batch.intrinsics, batch.post_rots, batch.post_trans,
                                       batch.bda)
        feats, stereo = self.encode_frame(batch.images)
        reduced = self.reduce(feats)
        if state is None:
            stereo_prev, reduced_prev = stereo, reduced
        else:
            has_prev = _per_camera(history >= 1, cameras)
            stereo_prev = torch.where(has_prev, state.stereo, stereo)
            reduced_prev = torch.where(has_prev, state.reduced, reduced)
        cost = self.stereo_cost(stereo, stereo_prev, key2key, prev2key, batch)
        if state is None:
            cost_prev = cost
        else:
            matched_now = self.stereo_cost(stereo_prev, stereo, prev2key, key2key, batch)
            cost_prev = torch.where(_per_camera(history >= 2, cameras), state.cost, matched_now)
        bev_key, depth = self.frame_bev(reduced, cost, mlp_input, batch)
        bev_prev, _ = self.frame_bev(reduced_prev, cost_prev, mlp_input, self._lifting(batch, prev2key))
        state = StreamState(stereo, reduced, cost, history)
        return self.fuse(bev_prev, bev_key, prev2key, batch), depth, state


class _TemporalOccupancy(BEVStereo4D):
    """The trunk plus a head: `forward`, `stream`, `predict`, the losses. Subclasses define `head`,
    `losses` and `classes` (the reference's test-time rule of their class), and set `occ_head`.

    `nerf_head`: the rendering head (training only: buffers, no parameters) for the rendering losses
    against rays with 2D labels; None without rendering.
    """

    occ_head: nn.Module

    def __init__(self, *trunk, nerf_head: NerfHead | None = None, **options) -> None:
        super().__init__(*trunk, **options)
        self.nerf_head = nerf_head

    def head(self, bev: Tensor):
        raise NotImplementedError

    def losses(self, output, targets: OccupancyTargets) -> dict[str, Tensor]:
        raise NotImplementedError

    def classes(self, output) -> Tensor:
        raise NotImplementedError

    def scores(self, output) -> Tensor:
        """B x X x Y x Z x classes scores whose argmax is `classes` (what the exported graph takes)."""
        raise NotImplementedError

    def forward(self, batch: CameraBatch, return_depth: bool = False):
        """The head's output for the key frame (logits, or density and semantics); with `return_depth`
        also the key frame's depth probabilities B x N x D x fH x fW (depth supervision)."""
        bev, depth = self.forward_bev(batch)
        output = self.head(bev)
        return (output, depth) if return_depth else output

    def stream(self, batch: CameraBatch, state: StreamState | None, prev2key: Tensor | None = None):
        """One frame of a sequence: (the head's output, the state for the next frame); see `stream_bev`."""
        bev, _, state = self.stream_bev(batch, state, prev2key)
        return self.head(bev), state

    def predict(self, batch: CameraBatch) -> Tensor:
        """Class index per voxel, B x X x Y x Z int64."""
        return self.classes(self(batch))

    def depth_loss(self, depth: Tensor, gt_depth: Tensor) -> Tensor:
        """Unweighted BEVDepth depth loss of the key frame's depth (the reference's `loss_depth`)."""
        return self.img_view_transformer.get_depth_loss(gt_depth, depth)

    def render_losses(self, output, rays: RayBatch, bda: Tensor) -> dict[str, Tensor]:
        """The rendering losses of `forward`'s output along the batch's rays (NerfHead.forward)."""
        return self.nerf_head(*self.occ_head.render_fields(output, self.nerf_head.act_shift), rays, bda)


class BEVStereo4DOCC(_TemporalOccupancy):
    """FlashOCC's BEVStereo4DOCC: the trunk and `occ_head` (BEVOCCHead2D / BEVOCCHead3D).

    Test-time rule: the argmax of the head's logits (FlashOCC's `get_occ_gpu` takes it of the softmax).
    """

    def __init__(self, *trunk, occ_head: nn.Module, **options) -> None:
        super().__init__(*trunk, **options)
        self.occ_head = occ_head

    def head(self, bev: Tensor) -> Tensor:
        return self.occ_head(bev)

    def losses(self, output: Tensor, targets: OccupancyTargets) -> dict[str, Tensor]:
        return {"loss_occ": self.occ_head.loss(output.float(), targets)}

    def classes(self, output: Tensor) -> Tensor:
        return output.argmax(-1)

    def scores(self, output: Tensor) -> Tensor:
        return output


class RenderOcc(_TemporalOccupancy):
    """The seed's RenderOcc (3D voxel features) and RenderOcc2D (channel-to-height): the trunk and a
    RenderOccHead whose layers sit at the top level of the state dict, as the reference's detector defines
    them (`final_conv`, `density_mlp`, `semantic_mlp`, the buffer `semantic_loss.weight`), beside
    `nerf_head` where the config renders.

    Args:
        occ_head: the head; its layers are registered here under their own names, and the head (which
            holds no tensors of its own) runs them, kept outside the module tree so they appear once.
    """

    def __init__(self, *trunk, occ_head: RenderOccHead, nerf_head: NerfHead | None = None,
                 **options) -> None:
        super().__init__(*trunk, nerf_head=nerf_head, **options)
        for name, layer in occ_head.named_children():
            self.add_module(name, layer)
        self.__dict__["occ_head"] = occ_head

    def head(self, bev: Tensor) -> DensitySemantics:
        return self.occ_head(bev)

    def losses(self, output: DensitySemantics, targets: OccupancyTargets) -> dict[str, Tensor]:
        return self.occ_head.losses(output, targets)

    def classes(self, output: DensitySemantics) -> Tensor:
        return self.occ_head.classes(output)

    def scores(self, output: DensitySemantics) -> Tensor:
        return self.occ_head.scores(output)
