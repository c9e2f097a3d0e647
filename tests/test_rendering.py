"""The rendering head (RenderOcc's NerfHead in torch ops): against a per-ray loop that follows the
reference's CUDA kernels, against finite differences, and on hand-built scenes with known depths."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from occupancy.classes import IGNORE_INDEX
from occupancy.grid import OCC3D_GRID, GridSpec
from training.batch import RayBatch
from training.models.nerf_head import NerfHead, NerfHeadConfig, nerf_head_config
from training.models.rendering import (
    EARLY_STOP_TRANSMITTANCE,
    alphas_to_weights,
    density_from_class_logits,
    distortion_loss,
    silog_loss,
    surface_loss,
)

# A 16 m x 16 m x 3.2 m grid (40 x 40 x 8 voxels) with a 7 m ball: the Occ3D geometry, scaled down so the
# loops stay fast.
SMALL_GRID = GridSpec(x_range=(-8.0, 8.0), y_range=(-8.0, 8.0), z_range=(-1.0, 2.2), voxel_size=0.4)
SMALL_CONFIG = nerf_head_config(SMALL_GRID, radius=7.0)


def random_rays(count: int, generator: torch.Generator, spread: float = 1.0,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from near the grid's centre in random directions, tilted towards the ground."""
    origins = torch.tensor([0.5, 0.0, 1.0]) + spread * (torch.rand(count, 3, generator=generator) - 0.5)
    directions = torch.randn(count, 3, generator=generator)
    directions[:, 2] = directions[:, 2] * 0.3 - 0.2
    return origins, directions * (0.5 + torch.rand(count, 1, generator=generator))  # any length


def trilinear(grid: np.ndarray, spec: GridSpec, point: np.ndarray) -> np.ndarray:
    """Hand-written trilinear interpolation between voxel centres (-40 + 0.4 (i + 0.5) for Occ3D), zero
    outside the grid: what grid_sample(align_corners=False, padding zeros) must compute."""
    position = (point - spec.lower) / spec.voxel_size - 0.5
    base = np.floor(position).astype(int)
    frac = position - base
    value = np.zeros(grid.shape[3:])
    for corner in np.ndindex(2, 2, 2):
        index = base + np.array(corner)
        if np.all(index >= 0) and np.all(index < np.array(spec.shape)):
            weight = np.prod(np.where(np.array(corner) == 1, frac, 1 - frac))
            value = value + weight * grid[tuple(index)]
    return value


def reference_render(head: NerfHead, spec: GridSpec, density: np.ndarray, semantic: np.ndarray,
                     origin: np.ndarray, direction: np.ndarray, bda: np.ndarray) -> dict:
    """One ray the way pmj's nerf_head.py and its kernels do it, sample by sample: normalise, contract,
    skip with cumdist_thres, trilinear lookups, Raw2Alpha, drop alpha <= 1e-7, alpha2weight with its
    early stop, drop weights <= 1e-7; depth and semantics summed over what is left."""
    config = head.config
    centre, radius, bg = head.scene_center.double().numpy(), config.radius, head.bg_len
    t = head.t_samples.double().numpy()
    o = (origin - centre) / radius
    d = direction / np.linalg.norm(direction)
    points = []
    for tk in t:
        p = o + tk * d
        n = np.linalg.norm(p)
        points.append((p if n <= 1 else p / n * ((1 + bg) - bg / n), n <= 1))
    keep, path = [points[0][1]], 0.0
    for k in range(1, len(points)):
        path += np.linalg.norm(points[k][0] - points[k - 1][0])
        over = path > head.skip_distance
        path = 0.0 if over else path
        keep.append(points[k][1] or over)
    samples = []
    for k, (p, _) in enumerate(points):
        if not keep[k]:
            continue
        ego = (bda @ p) * radius + centre  # normalised -> ego metres in the grid's (augmented) frame
        raw = float(trilinear(density[..., None], spec, ego)[0])
        alpha = 1 - (1 + math.exp(raw + float(head.act_shift))) ** (-config.step_size)
        if alpha > config.fast_color_thres:
            samples.append((t[k], alpha, trilinear(semantic, spec, ego)))
    transmittance, weights = 1.0, []
    for tk, alpha, logits in samples:
        weights.append((tk, transmittance * alpha, logits))
        transmittance *= 1 - alpha
        if transmittance < EARLY_STOP_TRANSMITTANCE:
            break
    kept = [(tk, w, logits) for tk, w, logits in weights if w > config.fast_color_thres]
    return {
        "t": np.array([tk for tk, _, _ in kept]),
        "weights": np.array([w for _, w, _ in kept]),
        "alphainv_last": transmittance,
        "depth": (sum(w * tk for tk, w, _ in kept) + 1e-7) * radius,
        "semantics": sum((w * logits for _, w, logits in kept), np.zeros(semantic.shape[-1])),
    }


def quadratic_distortion(t: np.ndarray, w: np.ndarray, interval: float) -> float:
    """Mip-NeRF 360's distortion of one ray, O(N^2): sum w_i w_j |s_i - s_j| + sum w_i^2 interval / 3."""
    s = 1 - 1 / (1 + t)
    pairs = (w[:, None] * w[None, :] * np.abs(s[:, None] - s[None, :])).sum()
    return float(pairs + (w**2).sum() * interval / 3)


@pytest.fixture(scope="module")
def scene():
    """A small grid with density blobs of both signs (so both thresholds and the early stop fire), random
    semantics, and 24 random rays under a BEV flip."""
    generator = torch.Generator().manual_seed(0)
    shape = SMALL_GRID.shape
    blobs = torch.randn(1, 1, *shape, generator=generator) * 150
    density = torch.nn.functional.avg_pool3d(blobs, 3, 1, 1)[0, 0]
    density = density + 6.0 * torch.randn(*shape, generator=generator)
    semantic = torch.randn(*shape, 5, generator=generator)
    origins, directions = random_rays(24, generator)
    bda = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    return density, semantic, origins, directions, bda


def test_renderer_matches_a_per_ray_loop_over_the_reference_kernels(scene):
    density, semantic, origins, directions, bda = scene
    head = NerfHead(SMALL_CONFIG, num_classes=5)
    rendered = head.render(density, semantic, origins, directions, bda)
    stopped = 0
    for r in range(len(origins)):
        expected = reference_render(head, SMALL_GRID, density.double().numpy(), semantic.double().numpy(),
                                    origins[r].double().numpy(), directions[r].double().numpy(),
                                    bda.double().numpy())
        used = rendered.weights[r] > 0
        np.testing.assert_allclose(rendered.t[r][used].numpy(), expected["t"], rtol=1e-6)
        np.testing.assert_allclose(rendered.weights[r][used].numpy(), expected["weights"], rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(float(rendered.alphainv_last[r]), expected["alphainv_last"], rtol=1e-4,
                                   atol=1e-7)
        np.testing.assert_allclose(float(rendered.depth[r]), expected["depth"], rtol=1e-4)
        np.testing.assert_allclose(rendered.semantics[r].numpy(), expected["semantics"], rtol=1e-4, atol=1e-5)
        stopped += expected["alphainv_last"] < EARLY_STOP_TRANSMITTANCE
        interval = 1 / head.samples_per_ray
        np.testing.assert_allclose(
            float(distortion_loss(rendered.weights[r:r + 1], 1 - 1 / (1 + rendered.t[r:r + 1]), interval)),
            quadratic_distortion(expected["t"], expected["weights"], interval), rtol=1e-4, atol=1e-9)
    assert 0 < stopped < len(origins)  # the early stop fired on some rays and not on others


def test_gradients_are_finite_and_match_finite_differences():
    generator = torch.Generator().manual_seed(1)
    spec = GridSpec(x_range=(-2.0, 2.0), y_range=(-2.0, 2.0), z_range=(-0.8, 0.8), voxel_size=0.4)
    head = NerfHead(nerf_head_config(spec, radius=1.6), num_classes=3).double()
    origins, directions = random_rays(6, generator, spread=0.4)
    origins[:, 2] = 0.0
    density = (torch.randn(*spec.shape, generator=generator, dtype=torch.float64) * 3 + 12).requires_grad_()
    semantic = torch.randn(*spec.shape, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    depth = torch.rand(6, generator=generator, dtype=torch.float64) + 0.5
    labels = torch.tensor([0, 1, 2, 1, IGNORE_INDEX, 0])

    def total(density: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        rendered = head.render(density, semantic, origins.double(), directions.double(),
                               torch.eye(3).double())
        return sum(head.losses(rendered, depth, labels).values())

    value = total(density, semantic)
    grads = torch.autograd.grad(value, (density, semantic))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert torch.autograd.gradcheck(total, (density, semantic), eps=1e-6, atol=1e-5, rtol=1e-3,
                                    fast_mode=True)


def test_an_occupied_slab_renders_at_its_face_wherever_it_stands():
    """Occupied voxels (raw density 2 |shift|, alpha ~0.3 per half voxel) behind a face: the rendered
    depth is the face's distance along each ray, behind it by the same small amount whether the face is
    near or far, in front or behind, at the ground or high up. A grid read with the wrong voxel centres
    (align_corners=True) or the reference's z extent (+-0.08) moves the face by 0.05-0.15 m with position."""
    head = NerfHead(NerfHeadConfig())
    high = float(-2 * head.act_shift)
    count = 40
    angles = torch.linspace(-0.4, 0.4, count)
    semantic = torch.zeros(*OCC3D_GRID.shape, 17)
    offsets = []
    for face_x in (30.0, 10.0, -19.6):  # vertical slabs: everything beyond x = face_x
        density = torch.zeros(OCC3D_GRID.shape)
        index = round((face_x + 40) / 0.4)
        sign = 1.0 if face_x > 0 else -1.0
        if face_x > 0:
            density[index:] = high
        else:
            density[:index] = high
        origins = torch.tensor([[1.5, 0.0, 1.6]]).repeat(count, 1)
        directions = torch.stack([sign * torch.cos(angles), torch.sin(angles), torch.full((count,), -0.02)],
                                 -1)
        rendered = head.render(density, semantic, origins, directions, torch.eye(3))
        unit = directions / directions.norm(dim=-1, keepdim=True)
        offsets.append(rendered.depth - (face_x - 1.5) / unit[:, 0])
    for top in (3, 6, 12):  # horizontal slabs: everything below z = -1 + 0.4 top
        density = torch.zeros(OCC3D_GRID.shape)
        density[:, :, :top] = high
        face_z = -1 + 0.4 * top
        origins = torch.tensor([[1.5, 0.0, face_z + 1.5]]).repeat(count, 1)
        directions = torch.stack([torch.cos(angles), 0.2 * torch.sin(angles), -0.15 - angles.abs()], -1)
        rendered = head.render(density, semantic, origins, directions, torch.eye(3))
        unit = directions / directions.norm(dim=-1, keepdim=True)
        height_error = (rendered.depth - (origins[:, 2] - face_z) / -unit[:, 2]) * -unit[:, 2]
        offsets.append(height_error)
    for offset in offsets:
        assert offset.abs().max() < 0.2

    means = torch.stack([o.mean() for o in offsets[:3]])
    assert means.max() - means.min() < 0.02
    heights = torch.stack([o.mean() for o in offsets[3:]])
    assert heights.max() - heights.min() < 0.02


def test_opaque_samples_leave_no_subnormal_floats():
    """Behind a surface the transmittance falls by e^-11.5 a sample: a cumulative product of (1 - alpha)
    reaches subnormal floats within eight samples, and every op on them runs ten times slower on a CPU."""
    thickness = torch.full((3, 50), 11.5, requires_grad=True)
    weights, transmittance, alphainv_last = alphas_to_weights(thickness)
    (weights.sum() + alphainv_last.sum()).backward()
    tiny = torch.finfo(torch.float32).tiny
    for values in (weights, transmittance, alphainv_last, thickness.grad):
        assert not ((values != 0) & (values.abs() < tiny)).any()
    torch.testing.assert_close(transmittance[:, 1], torch.full((3,), math.exp(-11.5)))
    torch.testing.assert_close(weights[:, 0], torch.ones(3))
    assert (weights[:, 1:] == 0).all()  # the early stop: T fell below 1e-3 after the first sample


def test_losses_fall_as_the_grid_fits_its_labels():
    """Rays labelled by a known slab; fitting a free grid to them with the four losses lowers each."""
    generator = torch.Generator().manual_seed(2)
    head = NerfHead(SMALL_CONFIG, num_classes=4)
    origins, directions = random_rays(64, generator, spread=0.5)
    directions[:, 2] = -directions[:, :2].norm(dim=-1) * 0.3
    unit = directions / directions.norm(dim=-1, keepdim=True)
    depth = (origins[:, 2] - 0.2) / -unit[:, 2]  # the plane z = 0.2
    labels = (origins[:, 0] + depth * unit[:, 0] > 0).long()  # class 1 in front, 0 behind
    density = torch.zeros(SMALL_GRID.shape, requires_grad=True)
    semantic = torch.zeros(*SMALL_GRID.shape, 4, requires_grad=True)
    optimizer = torch.optim.Adam([density, semantic], lr=0.5)
    rays = RayBatch(origins[None], unit[None], depth[None], labels[None])
    history = []
    for _ in range(30):
        losses = head(density[None], semantic[None], rays, torch.eye(3)[None])
        history.append({name: float(value.detach()) for name, value in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    for name in ("loss_render_depth", "loss_render_semantic"):
        assert history[-1][name] < 0.5 * history[0][name], name


def test_class_logits_render_with_their_free_probability_as_transmittance():
    head = NerfHead(NerfHeadConfig())
    logits = torch.randn(5, 18)
    alpha = 1 - (1 + torch.exp(density_from_class_logits(logits, head.act_shift) + head.act_shift)) ** -0.5
    p_free = logits.softmax(-1)[:, -1]
    torch.testing.assert_close((1 - alpha) ** 2, p_free)


def test_the_head_holds_the_reference_buffers_and_no_parameters():
    head = NerfHead(NerfHeadConfig())
    assert list(head.parameters()) == []
    state = head.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "scene_center": (3,), "scene_radius": (3,), "xyz_min": (3,), "xyz_max": (3,), "act_shift": (1,)}
    torch.testing.assert_close(state["scene_center"], torch.tensor([0.0, 0.0, 2.2]))
    # The reference's stored bounds (z +-6.4/80), which its checkpoints hold; the samples read the grid
    # between its true faces (z 3.2 m above and below the centre), which no loaded state changes.
    torch.testing.assert_close(state["xyz_max"], torch.tensor([40 / 39, 40 / 39, 0.08]))
    torch.testing.assert_close(head.grid_max, torch.tensor([40 / 39, 40 / 39, 3.2 / 39]))
    torch.testing.assert_close(head.grid_min, -head.grid_max)
    head.load_state_dict({**state, "xyz_max": torch.zeros(3)})
    torch.testing.assert_close(head.grid_max, torch.tensor([40 / 39, 40 / 39, 3.2 / 39]))
    assert head.samples_per_ray == 391 + 26  # the reference's N_inner + N_outer


def test_sky_rays_are_pushed_through_the_grid_and_leave_the_other_losses():
    """A ray through a sky pixel (infinite depth) crossing a wall: `loss_render_sky` is the optical depth it
    meets, its gradient thins the wall, and the depth loss reads only the rays with a surface. Without the
    weight (the reference configs) the loss is left out."""
    generator = torch.Generator().manual_seed(4)
    origins, directions = random_rays(8, generator, spread=0.2)
    directions[:, :2] = torch.tensor([1.0, 0.0])  # along +x, slightly down: through the wall at x = 4 m
    directions[:, 2] = -0.05
    unit = directions / directions.norm(dim=-1, keepdim=True)
    depth = torch.full((8,), math.inf)
    depth[:4] = (4.0 - origins[:4, 0]) / unit[:4, 0]  # the first four see the wall, the others are sky
    semantics = torch.full((8,), IGNORE_INDEX)
    density = torch.zeros(SMALL_GRID.shape)
    density[30:32] = 30.0  # x in [4, 4.8) m
    density.requires_grad_(True)
    semantic = torch.zeros(*SMALL_GRID.shape, 4)
    head = NerfHead(replace(SMALL_CONFIG, weight_sky=1.0), num_classes=4)
    rendered = head.render(density, semantic, origins, unit, torch.eye(3))
    losses = head.losses(rendered, depth, semantics)
    optical_depth = -torch.log(rendered.alphainv_last)
    torch.testing.assert_close(losses["loss_render_sky"], optical_depth[4:].mean())
    assert losses["loss_render_sky"] > 5  # stopped by the wall (the early stop ends the sum at ~7)
    assert losses["loss_render_depth"] < 0.1  # the four wall rays render their depth; the sky left out
    (grad,) = torch.autograd.grad(losses["loss_render_sky"], density)
    assert (grad[30:32] >= 0).all() and grad[30:32].sum() > 0  # descending it lowers the wall's density
    empty = head.losses(head.render(torch.zeros(SMALL_GRID.shape), semantic, origins, unit, torch.eye(3)),
                        depth, semantics)
    assert empty["loss_render_sky"] < 1e-3
    reference = NerfHead(SMALL_CONFIG, num_classes=4)
    assert "loss_render_sky" not in reference.losses(rendered, depth, semantics)
    # A wall dense enough that the light through it underflows to 0: the loss stays finite.
    dense = torch.zeros(SMALL_GRID.shape)
    dense[30:32] = 1e4
    dense.requires_grad_(True)
    sky_loss = head.losses(head.render(dense, semantic, origins, unit, torch.eye(3)), depth,
                           semantics)["loss_render_sky"]
    (grad,) = torch.autograd.grad(sky_loss, dense)
    assert torch.isfinite(sky_loss) and torch.isfinite(grad).all()


def test_the_surface_loss_asks_for_the_sharp_surface_that_silog_lets_spread():
    """Two rays of the same labelled range, 10 m: one stops at it, one spreads its weight from 6 to 14 m
    with the same mean. SILog scores both alike (the rendered depth is the same); `surface_loss` only
    the first as low, the second as -log of the weight within the margin."""
    distance = torch.arange(0.1, 20.0, 0.2)[None].repeat(2, 1)
    weights = torch.zeros_like(distance)
    near = (distance[0] - 10.0).abs() <= 0.4
    weights[0, near] = 1.0 / near.sum()
    spread = (distance[1] - 10.0).abs() <= 4.0
    weights[1, spread] = 1.0 / spread.sum()
    depth = torch.full((2,), 10.0)
    rendered_depth = (weights * distance).sum(-1)
    torch.testing.assert_close(rendered_depth, depth)
    assert silog_loss(rendered_depth[:1], depth[:1]) == pytest.approx(0.0, abs=1e-3)
    assert silog_loss(rendered_depth[1:], depth[1:]) == pytest.approx(0.0, abs=1e-3)
    sharp, diffuse = (surface_loss(weights[i:i + 1], distance[i:i + 1], depth[i:i + 1], 0.4) for i in (0, 1))
    assert sharp == pytest.approx(0.0, abs=1e-3)
    assert diffuse == pytest.approx(-math.log(float(weights[1, near].sum()) + 1e-4), rel=1e-5)


def test_a_wall_away_from_the_labelled_range_is_pulled_to_it():
    """Rays labelled at a wall 4 m along x: a wall there renders a low `loss_render_surface`, one 1.2 m
    further a high one whose gradient thickens the voxels at the label and leaves everything behind the
    margin alone (pushing the misplaced wall back is the depth loss's part). Sky rays stay out of it; the
    reference configs leave it out."""
    generator = torch.Generator().manual_seed(5)
    origins, directions = random_rays(8, generator, spread=0.2)
    directions[:, :2] = torch.tensor([1.0, 0.0])
    directions[:, 2] = -0.05
    unit = directions / directions.norm(dim=-1, keepdim=True)
    depth = (4.0 - origins[:, 0]) / unit[:, 0]
    depth[6:] = math.inf  # two sky rays
    semantics = torch.full((8,), IGNORE_INDEX)
    semantic = torch.zeros(*SMALL_GRID.shape, 4)
    head = NerfHead(replace(SMALL_CONFIG, weight_surface=1.0), num_classes=4)

    def surface(first_voxel: int) -> tuple[torch.Tensor, torch.Tensor]:
        density = torch.zeros(SMALL_GRID.shape)
        density[first_voxel:first_voxel + 2] = 30.0
        density.requires_grad_(True)
        loss = head.losses(head.render(density, semantic, origins, unit, torch.eye(3)), depth,
                           semantics)["loss_render_surface"]
        return loss, torch.autograd.grad(loss, density)[0]

    at_label, _ = surface(30)  # x in [4, 4.8) m
    behind, grad = surface(33)  # x in [5.2, 6.0) m
    assert at_label < 0.1
    assert behind > 5
    assert (grad[30] <= 0).all() and grad[30].sum() < 0  # descending it raises the density at the label
    assert (grad[33:] == 0).all()
    rendered = head.render(torch.zeros(SMALL_GRID.shape), semantic, origins, unit, torch.eye(3))
    finite = torch.isfinite(depth)
    torch.testing.assert_close(head.losses(rendered, depth, semantics)["loss_render_surface"],
                               surface_loss(rendered.weights[finite], rendered.t[finite] * head.config.radius,
                                            depth[finite], head.config.surface_margin_m))
    reference = NerfHead(SMALL_CONFIG, num_classes=4)
    assert "loss_render_surface" not in reference.losses(rendered, depth, semantics)


def test_rays_labelled_above_or_below_the_grid_cross_it_as_sky():
    """With `sky_outside_height`, a ray whose labelled point lies above the grid's top (2.2 m here) or below
    its floor becomes a sky ray (range inf, no class): the grid cannot stop it at its range. Rays labelled
    inside the height range, or beyond the grid's sides, keep their labels, and sky rays stay sky."""
    head = NerfHead(replace(SMALL_CONFIG, sky_outside_height=True), num_classes=4)
    origins = torch.tensor([[0.0, 0.0, 1.0]]).repeat(5, 1)
    directions = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5], [1.0, 0.0, -0.5], [1.0, 0.0, 0.0],
                               [0.0, 0.0, 1.0]])
    unit_z = directions[:, 2] / directions.norm(dim=-1)
    depth = torch.tensor([2.0 / unit_z[0], 0.5 / unit_z[1], 3.0 / -unit_z[2], 20.0, math.inf])
    semantics = torch.tensor([3, 2, 1, 0, IGNORE_INDEX])
    # heights of the labelled points: 3.0 (above), 1.5 (inside), -2.0 (below), 1.0 at 20 m (beyond the side)
    new_depth, new_semantics = head.outside_height_as_sky(origins, directions, depth, semantics)
    assert torch.equal(torch.isinf(new_depth), torch.tensor([True, False, True, False, True]))
    assert new_semantics.tolist() == [IGNORE_INDEX, 2, IGNORE_INDEX, 0, IGNORE_INDEX]
    torch.testing.assert_close(new_depth[[1, 3]], depth[[1, 3]])

    density, semantic = torch.zeros(1, *SMALL_GRID.shape), torch.zeros(1, *SMALL_GRID.shape, 4)
    rays = RayBatch(origins[None], directions[None], depth[None], semantics[None])
    rendered = head.render(density[0], semantic[0], origins, directions, torch.eye(3))
    torch.testing.assert_close(head(density, semantic, rays, torch.eye(3)[None]),
                               head.losses(rendered, new_depth, new_semantics))


def test_the_surface_semantic_loss_reads_the_voxel_the_label_bounds():
    """`loss_surface_semantic` is the cross-entropy of the logits half a voxel behind the labelled range:
    for a ray along x labelled at the face x = 4 m, voxel 30's centre (also under a BEV flip); its
    gradient reaches that voxel alone. Sky rays and rays without a class stay out of it."""
    head = NerfHead(replace(SMALL_CONFIG, weight_surface_semantic=1.0), num_classes=4)
    semantic = torch.zeros(*SMALL_GRID.shape, 4)
    semantic[30, :, :, 2] = 5.0  # x in [4, 4.4) m says class 2
    semantic.requires_grad_(True)
    origins = torch.tensor([[0.0, 0.3, 1.0]]).repeat(4, 1)
    directions = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)
    depth = torch.tensor([4.0, 4.0, 4.0, math.inf])
    semantics = torch.tensor([2, 1, IGNORE_INDEX, IGNORE_INDEX])
    for flip, sign in ((torch.eye(3), 1.0), (torch.diag(torch.tensor([-1.0, 1.0, 1.0])), -1.0)):
        logits = head.surface_logits(semantic, origins[:1], sign * directions[:1], depth[:1], flip)
        torch.testing.assert_close(logits, torch.tensor([[0.0, 0.0, 5.0, 0.0]]))
    right = head.surface_semantic_loss(semantic, origins[[0, 2, 3]], directions[[0, 2, 3]], depth[[0, 2, 3]],
                                       semantics[[0, 2, 3]], torch.eye(3))
    wrong = head.surface_semantic_loss(semantic, origins[1:], directions[1:], depth[1:], semantics[1:],
                                       torch.eye(3))
    assert right < 0.05 and wrong > 5
    (grad,) = torch.autograd.grad(wrong, semantic)
    assert grad[30].abs().sum() > 0 and grad[:30].abs().sum() == 0 and grad[31:].abs().sum() == 0
    density = torch.zeros(1, *SMALL_GRID.shape)
    rays = RayBatch(origins[None], directions[None], depth[None], semantics[None])
    losses = head(density, semantic[None], rays, torch.eye(3)[None])
    expected = head.surface_semantic_loss(semantic, origins, directions, depth, semantics, torch.eye(3))
    torch.testing.assert_close(losses["loss_surface_semantic"], expected)
    assert "loss_surface_semantic" not in NerfHead(SMALL_CONFIG, num_classes=4)(density, semantic[None], rays,
                                                                                 torch.eye(3)[None])
