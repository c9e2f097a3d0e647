"""BEVStereo4D: the stereo cost volume, its projection, the camera-aware input, shift_feature, exact
streaming on both test paths, the RenderOcc heads, the six reference configs and the Swin ImageNet remap."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from tiny_dataset import MICRO_TEMPORAL_CONFIG

from occupancy.classes import FREE_CLASS, NUM_CLASSES
from occupancy.errors import InputError
from training.batch import CameraBatch, FrameHistory, OccupancyTargets
from training.models.configs import CONFIGS, TemporalConfig, build_model
from training.models.depth_net import camera_aware_input
from training.models.losses import renderocc_class_weights
from training.models.stereo import cost_volume, sampling_grid
from training.models.swin import SwinTransformer
from training.models.temporal import DensitySemantics, StreamState, camera_to_previous, shift_feature
from training.models.view_transformer import VoxelGridConfig

# Counted on models built from the reference code (the arithmetic is in the design note).
REFERENCE_PARAMS = {
    "renderocc-r50-4d-stereo-256x704": 34_971_889,
    "flashocc-renderocc-r50-4d-stereo-256x704": 58_923_726,
    "flashocc-r50-4d-stereo-256x704": 58_923_726,
    "bevdetocc-stbase-4d-stereo-512x1408": 121_278_120,
    "flashocc-stbase-4d-stereo-512x1408": 144_989_110,
    "renderocc-swinb-4d-stereo-2dgt": 121_280_297,
}
NERF_HEAD_BUFFERS = {"nerf_head.scene_center": [3], "nerf_head.scene_radius": [3], "nerf_head.xyz_min": [3],
                     "nerf_head.xyz_max": [3], "nerf_head.act_shift": [1]}
R50_CONFIGS = ("renderocc-r50-4d-stereo-256x704", "flashocc-renderocc-r50-4d-stereo-256x704",
               "flashocc-r50-4d-stereo-256x704")
COARSE_GRID = VoxelGridConfig(x=(-40.0, 40.0, 4.0), y=(-40.0, 40.0, 4.0), z=(-1.0, 5.4, 6.4))


def _meta_model(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(CONFIGS[name])


# --- the cost volume ---------------------------------------------------------------------------------
def _bilinear_zero_padded(image, x: float, y: float):
    """C values at continuous pixel (x, y) of a C x H x W float64 array, outside pixels count as 0."""
    channels, height, width = image.shape
    x0, y0 = math.floor(x), math.floor(y)
    value = torch.zeros(channels, dtype=torch.float64)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < width and 0 <= yy < height:
                value += wx * wy * image[:, yy, xx]
    return value


def test_cost_volume_matches_a_brute_force_loop_over_hypotheses_and_pixels():
    generator = torch.Generator().manual_seed(0)
    cameras, channels, height, width, depths = 2, 10, 4, 6, 3  # 10 channels: two groups, 2 unused
    curr = torch.randn(cameras, channels, height, width, generator=generator)
    prev = torch.randn(cameras, channels, height, width, generator=generator)
    prev[:, 4, 1:3, 2:4] = 0  # an in-image zero of the last group's first channel: biased too
    grid = torch.rand(cameras, depths * height, width, 2, generator=generator) * 2.8 - 1.4
    got = cost_volume(curr, prev, grid, depths, outside_bias=5.0)

    want = torch.zeros(cameras, depths, height, width, dtype=torch.float64)
    points = grid.double().view(cameras, depths, height, width, 2)
    for c in range(cameras):
        for d in range(depths):
            for v in range(height):
                for u in range(width):
                    gx, gy = points[c, d, v, u]
                    sample = _bilinear_zero_padded(prev[c].double(), (gx + 1) / 2 * (width - 1),
                                                   (gy + 1) / 2 * (height - 1))
                    cost = (curr[c, :8, v, u].double() - sample[:8]).abs().sum()
                    want[c, d, v, u] = cost + (5.0 if sample[4] == 0 else 0.0)
    torch.testing.assert_close(got.double(), (-want).softmax(1), rtol=1e-5, atol=1e-6)


def test_stereo_projection_of_a_camera_that_moved_forward():
    """The current camera sits 1 m ahead of the previous one on its optical axis: a pixel u at depth d is
    at depth d + 1 for the previous camera, so it lands at cx + (u - cx) d / (d + 1) there; the image
    transform (half size, 10 rows cropped) applies on both sides."""
    fx = fy = 100.0
    cx, cy = 80.0, 40.0
    intrinsics = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]).view(1, 1, 3, 3)
    post_rots = torch.diag(torch.tensor([0.5, 0.5, 1.0])).view(1, 1, 3, 3)
    post_trans = torch.tensor([0.0, -10.0, 0.0]).view(1, 1, 3)
    curr2prev = torch.eye(4).view(1, 1, 4, 4).clone()
    curr2prev[..., 2, 3] = 1.0
    depths = torch.tensor([2.0, 5.0, 20.0])
    u_in = torch.tensor([0.0, 30.0, 79.0])  # input pixels of a 40 x 80 input
    v_in = torch.tensor([0.0, 20.0, 39.0])
    shape = (3, 3, 3)  # D x h x w
    frustum = torch.stack((u_in.view(1, 1, 3).expand(shape), v_in.view(1, 3, 1).expand(shape),
                           depths.view(3, 1, 1).expand(shape)), -1)
    grid = sampling_grid(frustum, curr2prev, intrinsics, post_rots, post_trans, (40, 80)).view(3, 3, 3, 2)
    u_src, v_src = u_in / 0.5, (v_in + 10.0) / 0.5  # source pixels of the current image
    d = depths.view(3, 1, 1)
    u_prev = cx + (u_src.view(1, 1, 3) - cx) * d / (d + 1)
    v_prev = cy + (v_src.view(1, 3, 1) - cy) * d / (d + 1)
    u_norm = (u_prev * 0.5) / 79 * 2 - 1  # previous source pixels -> input pixels -> [-1, 1]
    v_norm = (v_prev * 0.5 - 10.0) / 39 * 2 - 1
    want = torch.stack((u_norm.expand(shape), v_norm.expand(shape)), -1)
    torch.testing.assert_close(grid, want, rtol=1e-5, atol=1e-5)


def test_points_behind_the_previous_camera_fall_outside():
    intrinsics = torch.tensor([[100.0, 0, 40], [0, 100, 20], [0, 0, 1]]).view(1, 1, 3, 3)
    curr2prev = torch.eye(4).view(1, 1, 4, 4).clone()
    curr2prev[..., 2, 3] = -3.0  # the previous camera is 3 m ahead: depths below 3.001 m are behind it
    frustum = torch.tensor([[[[40.0, 20.0, d]]] for d in (2.0, 3.0005, 3.002)])
    grid = sampling_grid(frustum, curr2prev, intrinsics, torch.eye(3).view(1, 1, 3, 3), torch.zeros(1, 1, 3),
                         (40, 80))
    assert grid[0, :2, 0].tolist() == [[-2.0, -2.0], [-2.0, -2.0]]
    assert grid[0, 2, 0].abs().max() < 1


def test_a_camera_that_has_not_moved_gets_the_uniform_cost_volume_exact_arithmetic_gives():
    """Without a baseline every depth hypothesis samples one point, so the costs are equal: the matching
    gives the uniform distribution (not the reference's rounding noise), and a moved camera does not."""
    model = build_model(MICRO_TEMPORAL_CONFIG).eval()
    transformer = model.img_view_transformer
    depth_bins, h, w, _ = transformer.cv_frustum.shape
    height, width = MICRO_TEMPORAL_CONFIG.input_size
    torch.manual_seed(0)
    stereo = torch.randn(2, 8, h, w).relu()  # ReLU zeros: where the exact-zero test is fragile
    curr2prev = torch.eye(4).repeat(1, 2, 1, 1)
    curr2prev[0, 1, 2, 3] = 1.0  # camera 1 moved 1 m along its optical axis
    intrinsics = torch.tensor([[width / 2, 0, width / 2], [0, width / 2, height / 2], [0, 0, 1.0]])
    eye3, eye4 = torch.eye(3).repeat(1, 2, 1, 1), torch.eye(4).repeat(1, 2, 1, 1)
    images = torch.zeros(1, 2, 3, height, width)
    geometry = CameraBatch(images=images, intrinsics=intrinsics.repeat(1, 2, 1, 1),
                           sensor2ego=eye4, post_rots=eye3, post_trans=torch.zeros(1, 2, 3),
                           bda=torch.eye(3)[None])
    with torch.no_grad():
        cost = transformer.stereo_cost(stereo, stereo, curr2prev, geometry)
        uniform = transformer.depth_net.cost_volumn_net(torch.full((1, depth_bins, h, w), 1.0 / depth_bins))
    torch.testing.assert_close(cost[:1], uniform, rtol=0, atol=1e-6)  # the net's convolutions batch apart
    assert (cost[1:] - uniform).abs().max() > 1e-3


def test_camera_aware_input_is_bevdepths_27_values():
    sensor2keyego = torch.arange(16.0).view(1, 1, 4, 4)
    intrinsics = torch.tensor([[11.0, 0, 13], [0, 12, 14], [0, 0, 1]]).view(1, 1, 3, 3)
    post_rots = torch.tensor([[21.0, 22, 0], [23, 24, 0], [0, 0, 1]]).view(1, 1, 3, 3)
    post_trans = torch.tensor([25.0, 26, 0]).view(1, 1, 3)
    bda = torch.tensor([[31.0, 32, 0], [33, 34, 0], [0, 0, 35]]).view(1, 3, 3)
    values = camera_aware_input(sensor2keyego, intrinsics, post_rots, post_trans, bda)[0, 0].tolist()
    assert values == [11, 12, 13, 14, 21, 22, 25, 23, 24, 26, 31, 32, 33, 34, 35, *range(12)]


# --- shift_feature -----------------------------------------------------------------------------------
def _reference_gen_grid(bev, key_camera, adjacent_camera, bda, grid):
    """BEVDet4D.gen_grid, transcribed with its torch.inverse and boolean row/column selection."""
    b, _, height, width = bev.shape
    xs = torch.linspace(0, width - 1, width).view(1, width).expand(height, width)
    ys = torch.linspace(0, height - 1, height).view(height, 1).expand(height, width)
    points = torch.stack((xs, ys, torch.ones_like(xs)), -1).view(1, height, width, 3, 1).expand(b, -1, -1, -1,
                                                                                              -1)
    bda4 = torch.zeros(b, 1, 4, 4)
    bda4[:, :, :3, :3] = bda.unsqueeze(1)
    bda4[:, :, 3, 3] = 1
    curr = bda4.matmul(key_camera[:, None])
    adj = bda4.matmul(adjacent_camera[:, None])
    keyego2adjego = curr.matmul(torch.inverse(adj)).unsqueeze(1)
    keep = [True, True, False, True]
    keyego2adjego = keyego2adjego[..., keep, :][..., keep]
    feat2bev = torch.zeros(3, 3)
    feat2bev[0, 0], feat2bev[1, 1] = grid.x[2], grid.y[2]
    feat2bev[0, 2], feat2bev[1, 2] = grid.x[0], grid.y[0]
    feat2bev[2, 2] = 1
    tf = torch.inverse(feat2bev).matmul(keyego2adjego).matmul(feat2bev)
    sample = tf.matmul(points)[..., :2, 0] / torch.tensor([width - 1.0, height - 1.0]) * 2.0 - 1.0
    return F.grid_sample(bev, sample, align_corners=True)


def _pose(yaw: float, x: float, y: float) -> torch.Tensor:
    pose = torch.eye(4)
    pose[:2, :2] = torch.tensor([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    pose[:2, 3] = torch.tensor([x, y])
    return pose


def test_shift_feature_equals_the_references_gen_grid_and_moves_by_whole_cells():
    grid = VoxelGridConfig(x=(-10.0, 10.0, 1.0), y=(-10.0, 10.0, 1.0), z=(-1.0, 5.4, 6.4))
    bev = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    key = torch.stack([_pose(0.1, 1.0, 2.0), _pose(0.0, 0.0, 0.0)])
    adjacent = torch.stack([_pose(0.3, -1.5, 2.5), _pose(0.0, -2.0, 0.0)])
    bda = torch.stack([torch.diag(torch.tensor([-1.0, 1, 1])), torch.eye(3)])
    shifted = shift_feature(bev, key, adjacent, bda, grid)
    reference = _reference_gen_grid(bev, key, adjacent, bda, grid)
    torch.testing.assert_close(shifted, reference, rtol=1e-5, atol=1e-5)
    # Sample 1: the adjacent frame's camera sat 2 m (2 cells) behind: its map, drawn with the key frame's
    # cameras, shows everything 2 cells further ahead; the key frame samples it 2 cells ahead.
    torch.testing.assert_close(shifted[1, :, :, :18], bev[1, :, :, 2:], rtol=1e-5, atol=1e-5)
    identity = shift_feature(bev, key, key, bda, grid)
    torch.testing.assert_close(identity, bev, rtol=1e-5, atol=1e-5)


# What the matching and shift_feature export to: standard operators ONNX Runtime and TensorRT 10 run.
STANDARD_OPERATORS = {"Abs", "Add", "Cast", "Concat", "Constant", "Div", "Equal", "Expand", "Gather",
                      "GridSample", "Less", "MatMul", "Mul", "Neg", "ReduceSum", "Reshape", "Slice",
                      "Softmax", "Split", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where"}


class _Matching(torch.nn.Module):
    """The stereo matching of one frame pair, from cameras in the key ego to depth probabilities."""

    def __init__(self, frustum: torch.Tensor, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("frustum", frustum)
        self.image_size = image_size

    def forward(self, curr, prev, curr2key, prev2key, intrinsics, post_rots, post_trans):
        grid = sampling_grid(self.frustum, camera_to_previous(curr2key, prev2key), intrinsics, post_rots,
                             post_trans, self.image_size)
        return cost_volume(curr, prev, grid, self.frustum.shape[0], outside_bias=5.0)


class _Shift(torch.nn.Module):
    def forward(self, bev, key_camera, adjacent_camera, bda):
        return shift_feature(bev, key_camera, adjacent_camera, bda, COARSE_GRID)


def test_matching_and_shift_export_to_standard_onnx_and_run_in_onnxruntime():
    """GridSample (opset 16+), Softmax, Where, MatMul...: what ONNX Runtime and TensorRT 10 import."""
    import io

    import onnx
    import onnxruntime

    model = _built(_stream_config(True))
    batch = Sequence(3, model.img_view_transformer.input_size).batch(2)
    generator = torch.Generator().manual_seed(7)
    matching = (torch.randn(6, 8, 8, 24, generator=generator), torch.randn(6, 8, 8, 24, generator=generator),
                batch.sensor2ego, batch.history.sensor2keyego[:, 0], batch.intrinsics.contiguous(),
                batch.post_rots.contiguous(), batch.post_trans)
    shift = (torch.randn(1, 8, 20, 20, generator=generator), batch.sensor2ego[:, 0],
             batch.history.sensor2keyego[:, 0, 0], batch.bda)
    cases = ((_Matching(model.img_view_transformer.cv_frustum, (32, 96)), matching), (_Shift(), shift))
    for module, inputs in cases:
        buffer = io.BytesIO()
        torch.onnx.export(module, inputs, buffer, opset_version=17, dynamo=False)
        operators = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
        assert "GridSample" in operators and operators <= STANDARD_OPERATORS, operators - STANDARD_OPERATORS
        session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        feeds = {node.name: value.numpy() for node, value in zip(session.get_inputs(), inputs, strict=True)}
        (output,) = session.run(None, feeds)
        torch.testing.assert_close(torch.from_numpy(output), module(*inputs), rtol=1e-4, atol=1e-4)


# --- streaming -------------------------------------------------------------------------------------------
def _stream_config(aavt: bool, three_d: bool = False):
    config = replace(MICRO_TEMPORAL_CONFIG, pool_grid=COARSE_GRID, upsample_bev=False,
                     temporal=TemporalConfig(align_after_view_transformation=aavt, aspp_mid_channels=8))
    if three_d:
        from training.models.configs import BevEncoder3DConfig

        config = replace(config, pool_grid=replace(COARSE_GRID, z=(-1.0, 5.4, 1.6)),
                         bev_encoder=BevEncoder3DConfig(num_layer=(1, 1, 1), num_channels=(8, 16, 32)))
    return config


class Sequence:
    """A random drive: F frames of six cameras, each camera with its own ego pose (fired 8 ms apart)."""

    def __init__(self, frames: int, input_size: tuple[int, int], seed: int = 0, static: bool = False) -> None:
        generator = torch.Generator().manual_seed(seed)
        height, width = input_size
        self.images = torch.randn(frames, 1, 6, 3, height, width, generator=generator)
        if static:
            self.images[:] = self.images[0]
        optical_to_ego = torch.tensor([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
        self.sensor2ego = torch.stack([_pose(math.radians(a), 1.0, 0.0) @ optical_to_ego
                                       for a in (55, 0, -55, 110, 180, -110)]).double()
        speed, turn = (0.0, 0.0) if static else (2.0, 0.05)  # m and rad per frame
        self.ego2global = torch.stack([torch.stack([
            _pose(turn * (f + 0.016 * c), 700.0 + speed * (f + 0.016 * c), 300.0) for c in range(6)])
            for f in range(frames)]).double()
        intrinsic = torch.tensor([[40.0, 0, width / 2], [0, 40, height / 2], [0, 0, 1]])
        self.intrinsics = intrinsic.expand(1, 6, 3, 3)

    def cameras_in(self, frame: int, key: int) -> torch.Tensor:
        """1 x 6 x 4 x 4: frame's cameras in key's ego (the ego pose of key's first camera)."""
        key_ego2global = self.ego2global[key, 0]
        return (torch.linalg.inv(key_ego2global) @ self.ego2global[frame] @ self.sensor2ego).float()[None]

    def batch(self, key: int) -> CameraBatch:
        """Frame `key` with its two history frames as the dataset selects them."""
        history = [key - 1 if key >= 1 else key, key - 2 if key >= 2 else key]
        frames = FrameHistory(torch.stack([self.images[h] for h in history], 1),
                              torch.stack([self.cameras_in(h, key) for h in history], 1))
        return CameraBatch(self.images[key], self.intrinsics, self.cameras_in(key, key),
                           torch.eye(3).expand(1, 6, 3, 3), torch.zeros(1, 6, 3), torch.eye(3)[None], frames)


def _built(config, seed: int = 0):
    """A randomly initialised model in eval mode whose depth net is sharpened: at random initialisation the
    depth logits are nearly uniform and barely move with the cost volume, which would hide a wrong one."""
    torch.manual_seed(seed)
    model = build_model(config).eval()
    depth_net = model.img_view_transformer.depth_net
    with torch.no_grad():
        depth_net.depth_conv[-1].weight.mul_(20.0)
        for layer in depth_net.cost_volumn_net:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(10.0)
    return model


@pytest.mark.parametrize("aavt", [False, True], ids=["relift", "aavt"])
def test_streamed_frames_equal_the_offline_three_frame_forward(aavt):
    """Frame 0 is a cold start (history = itself), frame 1 the reference's (t, t-1, t), then steady."""
    model = _built(_stream_config(aavt))
    drive = Sequence(5, model.img_view_transformer.input_size)
    state = None
    with torch.no_grad():
        for frame in range(5):
            batch = drive.batch(frame)
            offline_bev, _ = model.forward_bev(batch)
            previous = None if frame == 0 else drive.cameras_in(frame - 1, frame)
            streamed_bev, _, state = model.stream_bev(batch, state, previous)
            torch.testing.assert_close(streamed_bev, offline_bev, rtol=1e-4, atol=1e-5)
            offline, streamed = model.occ_head(offline_bev), model.occ_head(streamed_bev)
            assert (streamed.argmax(-1) == offline.argmax(-1)).float().mean() >= 0.999
            assert state.history == min(frame, 2)


def test_streaming_a_3d_model_equals_the_offline_forward():
    model = _built(_stream_config(aavt=False, three_d=True))
    drive = Sequence(3, model.img_view_transformer.input_size, seed=3)
    state = None
    with torch.no_grad():
        for frame in range(3):
            previous = None if frame == 0 else drive.cameras_in(frame - 1, frame)
            streamed, _, state = model.stream_bev(drive.batch(frame), state, previous)
            offline = model.forward_bev(drive.batch(frame))[0]
            torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("aavt", [False, True], ids=["relift", "aavt"])
def test_history_matters(aavt):
    model = _built(_stream_config(aavt))
    drive = Sequence(3, model.img_view_transformer.input_size, seed=1)
    batch = drive.batch(2)
    moved = batch.history.sensor2keyego.clone()
    moved[:, 0, :, 0, 3] -= 3.0  # t-1's cameras 3 m further back
    with torch.no_grad():
        bev = model.forward_bev(batch)[0]
        other = model.forward_bev(replace(batch, history=replace(batch.history, sensor2keyego=moved)))[0]
    assert (bev - other).abs().mean() > 1e-3 * bev.abs().mean()


@pytest.mark.parametrize("aavt", [False, True], ids=["relift", "aavt"])
def test_a_static_scene_with_the_frame_repeated_equals_the_cold_start(aavt):
    model = _built(_stream_config(aavt))
    drive = Sequence(3, model.img_view_transformer.input_size, seed=2, static=True)
    with torch.no_grad():
        cold, state = model.stream(drive.batch(0), None)
        for frame in (1, 2):
            streamed, state = model.stream(drive.batch(frame), state, drive.cameras_in(frame - 1, frame))
            torch.testing.assert_close(streamed, cold, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(drive.batch(2)), cold, rtol=1e-4, atol=1e-5)


def test_the_bev_encoder_sees_t_minus_1_then_t_as_the_reference_concatenates():
    model = _built(_stream_config(False))
    seen = []
    model.img_bev_encoder_backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    batch = Sequence(1, model.img_view_transformer.input_size).batch(0)
    previous, key = torch.randn(1, 8, 20, 20), torch.randn(1, 8, 20, 20)
    with torch.no_grad():
        model.fuse(previous, key, batch.sensor2ego, batch)
    assert torch.equal(seen[0], torch.cat([previous, key], 1))


def test_stream_needs_the_previous_cameras_with_a_state():
    model = _built(_stream_config(False))
    batch = Sequence(1, model.img_view_transformer.input_size).batch(0)
    empty = StreamState(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="previous frame's cameras"):
        model.stream(batch, empty)


def test_aavt_is_the_test_path_only():
    """Trained, an aavt model computes what the re-lifting one does; evaluated, it warps t-1's map."""
    models = {aavt: _built(_stream_config(aavt)) for aavt in (False, True)}
    batch = Sequence(3, models[False].img_view_transformer.input_size, seed=4).batch(2)
    outputs = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            for aavt, model in models.items():
                model.train(mode == "train")
                torch.manual_seed(0)  # the same dropout masks in the depth nets' ASPP
                outputs[mode, aavt] = model.forward_bev(batch)[0]
    torch.testing.assert_close(outputs["train", True], outputs["train", False])
    assert (outputs["eval", True] - outputs["eval", False]).abs().max() > 1e-3


# --- the RenderOcc heads -----------------------------------------------------------------------------
def _render_occ_model(name: str, **head):
    """The micro network (2D, channel-to-height) with the named config's RenderOcc head settings."""
    named = CONFIGS[name]
    return _built(replace(MICRO_TEMPORAL_CONFIG, render_occ=replace(named.render_occ, **head),
                          nerf_head=named.nerf_head))


def test_render_occ_rule_occupied_where_the_occupied_score_wins_ties_included():
    model = _render_occ_model("flashocc-r50-4d-stereo-256x704")
    density = torch.tensor([[3.0, 1.0], [1.0, 3.0], [2.0, 2.0]]).view(1, 3, 1, 1, 2)
    semantics = torch.zeros(1, 3, 1, 1, NUM_CLASSES - 1)
    semantics[..., 4] = 1.0
    classes = model.classes(DensitySemantics(density, semantics)).flatten().tolist()
    assert classes == [4, FREE_CLASS, 4]


def test_renderocc_swinb_rule_is_the_8_5_threshold():
    config = CONFIGS["renderocc-swinb-4d-stereo-2dgt"]
    assert config.render_occ.test_threshold == 8.5
    model = _render_occ_model("flashocc-r50-4d-stereo-256x704", test_threshold=8.5)
    density = torch.tensor([[9.0, 20.0], [8.0, 0.0]]).view(1, 2, 1, 1, 2)
    semantics = torch.zeros(1, 2, 1, 1, NUM_CLASSES - 1)
    semantics[..., 2] = 1.0
    assert model.classes(DensitySemantics(density, semantics)).flatten().tolist() == [2, FREE_CLASS]


def test_render_occ_3d_losses_are_the_seeds_masked_cross_entropies():
    model = _render_occ_model("flashocc-r50-4d-stereo-256x704")
    generator = torch.Generator().manual_seed(5)
    density = torch.randn(1, 4, 4, 2, 2, generator=generator)
    semantics = torch.randn(1, 4, 4, 2, NUM_CLASSES - 1, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (1, 4, 4, 2), generator=generator)
    visible = torch.rand(1, 4, 4, 2, generator=generator) > 0.3
    losses = model.losses(DensitySemantics(density, semantics), OccupancyTargets(labels, visible))
    free = (labels == FREE_CLASS).long()
    geo = F.cross_entropy(density[visible], free[visible])
    occupied = visible & (labels != FREE_CLASS)
    weights = renderocc_class_weights(normalised=True)
    sem = torch.nn.CrossEntropyLoss(weight=weights)(semantics[occupied], labels[occupied])
    torch.testing.assert_close(losses["loss_3d_geo"], geo)
    torch.testing.assert_close(losses["loss_3d_sem"], sem)


def test_render_occ_outputs_density_and_semantics_per_voxel():
    model = _render_occ_model("flashocc-renderocc-r50-4d-stereo-256x704")
    batch = Sequence(1, model.img_view_transformer.input_size).batch(0)
    with torch.no_grad():
        output = model(batch)
    assert output.density.shape == (1, 200, 200, 16, 2)  # the micro net upsamples its 100 x 100 BEV
    assert output.semantics.shape == (1, 200, 200, 16, NUM_CLASSES - 1)
    assert (output.density >= 0).all()  # final_softplus
    assert model.predict(batch).shape == (1, 200, 200, 16)


# --- the reference configs ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_temporal_configs_have_the_reference_parameter_counts(name):
    assert sum(p.numel() for p in _meta_model(name).parameters()) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_temporal_state_dicts_hold_the_references_modules_and_buffers(name):
    state = {key: list(value.shape) for key, value in _meta_model(name).state_dict().items()}
    config = CONFIGS[name]
    trunk = {"img_backbone", "img_neck", "img_view_transformer", "pre_process_net",
             "img_bev_encoder_backbone", "img_bev_encoder_neck"}
    heads = ({"final_conv", "density_mlp", "semantic_mlp", "semantic_loss"} if config.render_occ
             else {"occ_head"})
    if config.nerf_head:
        heads.add("nerf_head")
    assert {key.split(".")[0] for key in state} == trunk | heads
    depth_net = "img_view_transformer.depth_net."
    width = config.neck_channels
    assert state[depth_net + "bn.running_mean"] == [27]
    assert state[depth_net + "cost_volumn_net.0.weight"] == [88, 88, 3, 3]
    assert state[depth_net + "cost_volumn_net.3.running_var"] == [88]
    assert state[depth_net + "depth_conv.0.conv1.weight"] == [width, width + 88, 3, 3]
    assert state[depth_net + "depth_conv.0.downsample.bias"] == [width]
    assert state[depth_net + "depth_conv.3.aspp4.atrous_conv.weight"] == [96, width, 3, 3]
    assert state[depth_net + "depth_conv.4.weight"] == [88, width, 1, 1]
    assert state[depth_net + "context_conv.weight"] == [config.bev_channels, width, 1, 1]
    assert not any("frustum" in key or "grid_" in key for key in state)
    if config.render_occ:
        assert state["semantic_loss.weight"] == [17]
        nerf = {key: shape for key, shape in state.items() if key.startswith("nerf_head.")}
        assert nerf == (NERF_HEAD_BUFFERS if config.nerf_head else {})


def test_nerf_head_buffers_hold_the_references_values():
    model = _render_occ_model("flashocc-renderocc-r50-4d-stereo-256x704")
    head = model.nerf_head
    assert head.scene_center.tolist() == pytest.approx([0.0, 0.0, 2.2])
    assert head.scene_radius.tolist() == [39.0, 39.0, 39.0]
    assert head.xyz_min.tolist() == pytest.approx([-1 - 1 / 39, -1 - 1 / 39, -0.08])
    assert head.xyz_max.tolist() == pytest.approx([1 + 1 / 39, 1 + 1 / 39, 0.08])
    assert head.act_shift.item() == pytest.approx(math.log(1e-6 / (1 - 1e-6)), rel=1e-6)


def test_semantic_loss_weights_are_renderoccs_and_normalised_for_renderocc2d():
    weights = renderocc_class_weights(normalised=False)
    assert weights[0].item() == pytest.approx(1 / math.log(1163161.001), rel=1e-6)
    assert renderocc_class_weights(normalised=True).sum().item() == pytest.approx(1.0)
    seed_3d = _render_occ_model("renderocc-r50-4d-stereo-256x704")
    torch.testing.assert_close(seed_3d.semantic_loss.weight, weights)


def test_test_paths_follow_the_reference_test_scripts():
    aavt = {name: CONFIGS[name].temporal.align_after_view_transformation for name in REFERENCE_PARAMS}
    assert aavt == {name: name == "flashocc-stbase-4d-stereo-512x1408" for name in REFERENCE_PARAMS}
    voxels = CONFIGS["bevdetocc-stbase-4d-stereo-512x1408"]
    with pytest.raises(InputError, match="warps 2D BEV maps only"), torch.device("meta"):
        build_model(replace(voxels, temporal=replace(voxels.temporal, align_after_view_transformation=True)))


@pytest.mark.slow
@pytest.mark.parametrize("name", R50_CONFIGS)
def test_r50_config_full_size_three_frame_forward(name, tmp_path):
    """A reference-layout (mmcv) checkpoint of the full-size model loads strictly and gives a grid."""
    from training.models.checkpoint import load_model

    config = CONFIGS[name]
    model = _built(config)
    path = tmp_path / "reference.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"epoch": 24}}, path)
    loaded, _ = load_model(path, name)
    batch = Sequence(3, config.input_size).batch(2)
    with torch.no_grad():
        classes = loaded.predict(batch)
    assert classes.shape == (1, 200, 200, 16)
    assert classes.min() >= 0 and classes.max() <= FREE_CLASS


@pytest.mark.slow
@pytest.mark.parametrize("name", R50_CONFIGS[:2])  # the third is the second's network without nerf_head
def test_r50_config_streams_the_offline_grids_at_full_size(name):
    model = _built(CONFIGS[name])
    drive = Sequence(3, CONFIGS[name].input_size, seed=6)
    state = None
    with torch.no_grad():
        for frame in range(3):
            batch = drive.batch(frame)
            previous = None if frame == 0 else drive.cameras_in(frame - 1, frame)
            streamed, state = model.stream(batch, state, previous)
            offline = model(batch)
            torch.testing.assert_close(streamed.density, offline.density, rtol=1e-4, atol=1e-4)
            agreement = (model.classes(streamed) == model.classes(offline)).float().mean()
            assert agreement >= 0.999, (frame, agreement)


# --- Swin-B ------------------------------------------------------------------------------------------
def test_swin_imagenet_checkpoint_loads_through_the_layers_remap():
    """An official-layout state dict (layers.*, attn.*, mlp.fc*, the official patch-merging order) maps
    onto ours: every tensor lands, and patch merging computes what the official one computes."""
    torch.manual_seed(0)
    swin = SwinTransformer(embed_dims=8, depths=(2, 2), num_heads=(2, 4), strides=(4, 2), out_indices=(1,),
                           window_size=3)
    official = {}
    for key, value in swin.state_dict().items():
        if key.startswith("norm"):
            continue
        name = (key.replace("stages.", "layers.").replace("attn.w_msa.", "attn.")
                .replace("ffn.layers.0.0.", "mlp.fc1.").replace("ffn.layers.1.", "mlp.fc2.")
                .replace("patch_embed.projection.", "patch_embed.proj."))
        official[name] = torch.randn(value.shape) if value.is_floating_point() else value
    official["head.weight"], official["norm.weight"] = torch.zeros(10, 16), torch.ones(16)
    converted = SwinTransformer.imagenet_state_dict(official)
    result = swin.load_state_dict(converted, strict=False)
    assert result.missing_keys == ["norm1.weight", "norm1.bias"] and result.unexpected_keys == ["norm.weight"]

    tokens = torch.randn(1, 4 * 6, 8)
    grid = tokens.view(1, 4, 6, 8)
    # The official order: x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] (rows, columns).
    merged = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]],
                       -1)
    want = F.linear(F.layer_norm(merged.view(1, 6, 32), (32,), official["layers.0.downsample.norm.weight"],
                                 official["layers.0.downsample.norm.bias"]),
                    official["layers.0.downsample.reduction.weight"])
    got, _ = swin.stages[0].downsample(tokens, (4, 6))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
