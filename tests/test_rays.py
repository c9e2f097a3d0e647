"""Rays with 2D labels for rendering supervision: they meet their labelled voxels through the image and BEV
augmentations, from the synthetic world's 2D labels and from LiDAR with nuScenes-lidarseg classes read
through the devkit; the weighted draw of the ray budget."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_dataset import write_synthetic_scene

from occupancy.classes import CLASS_NAMES, FREE_CLASS, IGNORE_INDEX
from occupancy.errors import InputError
from occupancy.geometry import pose_matrix, transform_points
from occupancy.grid import OCC3D_GRID
from training.data.augment import AugmentConfig
from training.data.dataset import OccupancyDataset, collate, read_labels_2d, read_lidar_points
from training.data.lidarseg import LIDARSEG_TO_OCC3D
from training.data.prepare import build_index, write_indexes
from training.data.rays import (
    MOVING_CLASSES,
    RaySampling,
    draw_rays,
    draw_weights,
    draw_without_replacement,
    label_source,
)
from training.models.nerf_head import NerfHead, NerfHeadConfig

KEY_FRAME_ONLY = RaySampling(max_rays=3000, aux_frames=())
# Every augmentation at once: resize, crop, rotation, image flips, and both BEV flips half the time.
AUGMENT = AugmentConfig(resize_lim=(-0.06, 0.11), rot_lim=(-5.4, 5.4), flip=True)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic_scene(tmp_path_factory.mktemp("synth"), seed=5)


def render_labels(sample) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sample's own (flipped) ground truth rendered along its rays by the rendering head: occupied
    voxels opaque, their class one-hot. Returns rendered depth, rendered class, and which rays end
    inside the grid and the head's inner ball (where the rendering can meet them)."""
    head = NerfHead(NerfHeadConfig())
    occupied = sample.semantics != FREE_CLASS
    density = torch.where(occupied, 4 * -head.act_shift, torch.zeros(()))
    semantic = torch.nn.functional.one_hot(sample.semantics.long(), 18)[..., :17].float() * 10
    rays = sample.rays
    rendered = head.render(density, semantic, rays.origins, rays.directions, sample.bda)
    ends = rays.origins + rays.directions * rays.depth[:, None]
    lower, upper = torch.tensor(OCC3D_GRID.range_m[:3]), torch.tensor(OCC3D_GRID.range_m[3:])
    inside = ((ends > lower + 0.4) & (ends < upper - 0.4)).all(-1)
    inside &= (ends - head.scene_center).norm(dim=-1) < 0.95 * head.config.radius
    return rendered.depth, rendered.semantics.argmax(-1), inside


def assert_depths_agree(rendered: torch.Tensor, labelled: torch.Tensor, median: float = 0.2,
                        close: float = 0.85) -> None:
    """Rendered depths land on the labelled surfaces: the rendering puts a face where the interpolated
    density crosses the opacity threshold, a few centimetres from the voxel face, which grazing rays and
    rays past an object's edge (which the interpolation fattens by 0.1 m) turn into larger errors."""
    error = (rendered - labelled).abs()
    assert error.median() < median
    assert (error < 0.6).float().mean() > close


def test_rays_meet_their_labelled_voxels_through_image_and_bev_augmentation(synthetic):
    dataset = OccupancyDataset(synthetic, "train", (64, 176), AUGMENT, seed=0, rays=KEY_FRAME_ONLY)
    flips = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        flips.add(tuple(torch.diagonal(sample.bda).tolist()))
        depth, label, inside = render_labels(sample)
        assert inside.float().mean() > 0.5
        # The labelled pixel's ray passes through a voxel of its class, at its depth.
        assert (label[inside] == sample.rays.semantics[inside]).float().mean() > 0.95
        assert_depths_agree(depth[inside], sample.rays.depth[inside])
    assert len(flips) > 1  # some samples flipped, some not


def test_auxiliary_frames_land_in_the_key_frames_ego_frame(synthetic):
    sampling = RaySampling(max_rays=3000, aux_frames=(-1, 1, 2), aux_weight=1.0)
    dataset = OccupancyDataset(synthetic, "train", (64, 176), rays=sampling)
    sample = dataset[1]  # frames 0, 2 and 3 are its neighbours
    depth, label, inside = render_labels(sample)
    static = inside & ~torch.isin(sample.rays.semantics, torch.tensor(MOVING_CLASSES))
    # The ego moved metres between the frames; carried into the key ego, their static surfaces agree.
    assert static.sum() > 1000
    # Each frame's world is voxelised in its own ego frame, so its surfaces sit up to half a voxel from the
    # key frame's voxel faces; the ego itself moved metres.
    assert (label[static] == sample.rays.semantics[static]).float().mean() > 0.9
    assert_depths_agree(depth[static], sample.rays.depth[static], median=0.4, close=0.75)


def test_rays_are_drawn_again_the_same_for_the_same_epoch(synthetic):
    dataset = OccupancyDataset(synthetic, "train", (64, 176), AUGMENT, seed=3, rays=RaySampling(max_rays=500))
    first, again = dataset[2].rays, dataset[2].rays
    torch.testing.assert_close(first.origins, again.origins)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2].rays.depth, first.depth)
    batch = collate([dataset[0], dataset[2]])
    assert batch.rays.depth.shape == (2, 500) and (batch.rays.depth > 0).all()


def add_lidarseg(root: Path) -> None:
    """Make the synthetic root a nuScenes-lidarseg root: category indices in category.json, lidarseg.json and
    one label file per LIDAR_TOP sweep, each point labelled by the ground-truth voxel it hits."""
    tables = root / "v1.0-trainval"
    names = sorted(LIDARSEG_TO_OCC3D)
    index_of = {name: i for i, name in enumerate(names)}
    categories = json.loads((tables / "category.json").read_text())
    known = {c["name"] for c in categories}
    categories += [{"token": f"lidarseg-{n}", "name": n, "description": n} for n in names if n not in known]
    for category in categories:
        category["index"] = index_of[category["name"]]
    (tables / "category.json").write_text(json.dumps(categories))
    occ3d_to_lidarseg = {}
    for name, occ3d in LIDARSEG_TO_OCC3D.items():
        if occ3d is not None:
            occ3d_to_lidarseg.setdefault(CLASS_NAMES.index(occ3d), index_of[name])
    index = json.loads((root / "occ_index_train.json").read_text())
    records = []
    for entry in index["samples"]:
        lidar = entry["lidar"]
        points = read_lidar_points(root / lidar["path"])
        ego = transform_points(pose_matrix(**lidar["sensor2ego"]), points)
        beam = ego - np.asarray(lidar["sensor2ego"]["translation"])
        inner = ego + 0.05 * beam / np.linalg.norm(beam, axis=-1, keepdims=True)
        voxels, inside = OCC3D_GRID.to_index(inner)
        semantics = np.load(root / entry["occ_path"])["semantics"]
        classes = np.full(len(points), FREE_CLASS)
        classes[inside] = semantics[tuple(voxels[inside].T)]
        labels = np.array([occ3d_to_lidarseg.get(c, index_of["noise"]) for c in classes], np.uint8)
        token = Path(lidar["path"]).name  # any unique name; the devkit finds files through lidarseg.json
        sample_data = next(r for r in json.loads((tables / "sample_data.json").read_text())
                           if r["filename"] == lidar["path"])
        filename = f"lidarseg/v1.0-trainval/{token}_lidarseg.bin"
        (root / filename).parent.mkdir(parents=True, exist_ok=True)
        labels.tofile(root / filename)
        records.append({"token": sample_data["token"], "sample_data_token": sample_data["token"],
                        "filename": filename})
    (tables / "lidarseg.json").write_text(json.dumps(records))


@pytest.fixture(scope="module")
def lidar_root(synthetic, tmp_path_factory) -> Path:
    """The synthetic root without its 2D labels, so rays come from the LiDAR as on a real root."""
    root = Path(shutil.copytree(synthetic, tmp_path_factory.mktemp("lidar") / "data"))
    shutil.rmtree(root / "samples_2d")
    write_indexes(root, "v1.0-trainval", build_index(root, progress=False))
    return root


def test_lidar_rays_take_their_classes_from_lidarseg_through_the_devkit(lidar_root, tmp_path):
    root = Path(shutil.copytree(lidar_root, tmp_path / "data"))
    add_lidarseg(root)
    write_indexes(root, "v1.0-trainval", build_index(root, progress=False))
    dataset = OccupancyDataset(root, "train", (64, 176), AUGMENT, seed=1, rays=KEY_FRAME_ONLY)
    assert "lidarseg" in label_source(dataset.samples)
    sample = dataset[0]
    assert (sample.rays.semantics != IGNORE_INDEX).all()
    depth, label, inside = render_labels(sample)
    assert inside.sum() > 500
    # The LiDAR sits above the cameras: some of its points are hidden from them (BEVDet projects them all).
    assert (label[inside] == sample.rays.semantics[inside]).float().mean() > 0.9
    assert_depths_agree(depth[inside], sample.rays.depth[inside], close=0.8)


def test_a_root_without_lidarseg_supervises_depth_only_and_says_so(lidar_root):
    dataset = OccupancyDataset(lidar_root, "train", (64, 176), rays=KEY_FRAME_ONLY)
    assert "depth only" in label_source(dataset.samples)
    sample = dataset[0]
    assert len(sample.rays.depth) > 500 and (sample.rays.semantics == IGNORE_INDEX).all()
    depth, _, inside = render_labels(sample)
    assert_depths_agree(depth[inside], sample.rays.depth[inside], close=0.8)


def test_an_unknown_lidarseg_category_is_named(lidar_root, tmp_path):
    root = Path(shutil.copytree(lidar_root, tmp_path / "data"))
    add_lidarseg(root)
    categories = json.loads((root / "v1.0-trainval" / "category.json").read_text())
    categories[0]["name"] = "vehicle.hovercraft"
    (root / "v1.0-trainval" / "category.json").write_text(json.dumps(categories))
    with pytest.raises(InputError, match=r"vehicle\.hovercraft"):
        build_index(root, progress=False)


def test_the_draw_follows_the_weights_without_replacement():
    rng = np.random.default_rng(0)
    weights = np.array([1.0, 2.0, 0.0, 4.0, 1.0])
    counts = np.zeros(5)
    for _ in range(4000):
        counts[draw_without_replacement(weights, 1, rng)] += 1
    np.testing.assert_allclose(counts / counts.sum(), weights / weights.sum(), atol=0.02)
    pairs = [draw_without_replacement(weights, 2, rng) for _ in range(200)]
    assert all(len(set(p)) == 2 and 2 not in p for p in pairs)
    np.testing.assert_array_equal(draw_without_replacement(weights, 9, rng), [0, 1, 3, 4])


def test_draw_weights_favour_rare_classes_and_the_key_frame():
    car, road = CLASS_NAMES.index("car"), CLASS_NAMES.index("driveable_surface")
    semantics = np.array([car, road, IGNORE_INDEX], np.uint8)
    sampling = RaySampling()
    key = draw_weights(semantics, False, sampling)
    aux = draw_weights(semantics, True, sampling)
    assert key[0] > key[1] and key[2] == 1.0
    np.testing.assert_allclose(aux, [0.0, sampling.aux_weight * key[1], sampling.aux_weight])


def test_a_rendered_subset_keeps_the_budgets_class_composition():
    """A draw without replacement exhausts the rare classes first, so its composition depends on the
    budget: the reference's 38,400 of 300,000 pixels, 3,000 of them of a class weighted 933, hold 7.5 %
    of that class; of 1,024 drawn directly, 9 in 10 would be. A uniform 1,024 of the 38,400 keep
    the budget's share."""
    bicycle, road = CLASS_NAMES.index("bicycle"), CLASS_NAMES.index("driveable_surface")
    semantics = np.full(300_000, road, np.uint8)
    semantics[:3000] = bicycle
    weights = draw_weights(semantics, False, RaySampling())
    rng = np.random.default_rng(0)
    budget = draw_rays(weights, RaySampling(), rng)
    subset = draw_rays(weights, RaySampling(rendered_rays=1024), rng)
    direct = draw_rays(weights, RaySampling(max_rays=1024), rng)
    assert len(budget) == 38_400 and len(subset) == len(direct) == 1024 and len(set(subset)) == 1024
    share = {name: (semantics[chosen] == bicycle).mean()
             for name, chosen in (("budget", budget), ("subset", subset), ("direct", direct))}
    assert share["budget"] == pytest.approx(3000 / 38_400, abs=0.002)
    assert share["subset"] == pytest.approx(share["budget"], abs=0.03)
    assert share["direct"] > 0.85


def test_sky_pixels_become_rays_that_cross_the_grid_unstopped(synthetic):
    """With `sky`, the pixels the synthetic world labels sky are drawn as rays of infinite depth and no
    class, and the sample's own ground truth lets nearly all of them through (a sky pixel sees no surface
    within 100 m). Without it, as the reference, none are drawn."""
    sampling = replace(KEY_FRAME_ONLY, sky=True)
    sample = OccupancyDataset(synthetic, "train", (64, 176), AUGMENT, seed=1, rays=sampling)[2]
    sky = torch.isinf(sample.rays.depth)
    assert sky.sum() > 100 and (~sky).sum() > 100
    assert (sample.rays.semantics[sky] == IGNORE_INDEX).all()
    head = NerfHead(NerfHeadConfig())
    density = torch.where(sample.semantics != FREE_CLASS, 4 * -head.act_shift, torch.zeros(()))
    rendered = head.render(density, torch.zeros(*density.shape, 17), sample.rays.origins[sky],
                           sample.rays.directions[sky], sample.bda)
    assert (rendered.alphainv_last > 0.5).float().mean() > 0.95
    plain = OccupancyDataset(synthetic, "train", (64, 176), AUGMENT, seed=1, rays=KEY_FRAME_ONLY)[2]
    assert torch.isfinite(plain.rays.depth).all()


def test_labels_written_before_sky_pixels_read_as_none(synthetic, tmp_path):
    path = next((synthetic / "samples_2d").rglob("*.npz"))
    with np.load(path) as labels:
        assert len(labels["sky_uv"]) > 0
        np.savez(tmp_path / "old.npz", uv=labels["uv"], depth=labels["depth"], semantics=labels["semantics"])
    *_, sky = read_labels_2d(tmp_path / "old.npz")
    assert sky.shape == (0, 2)
