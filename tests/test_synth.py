"""The synthetic world: ray-cast visibility, labels that agree with the images, devkit-readable tables,
and byte-identical output for a seed."""

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from occupancy.classes import CLASS_NAMES, FREE_CLASS
from occupancy.geometry import pose_matrix, quaternion_to_matrix
from occupancy.grid import OCC3D_GRID, GridSpec
from training.data.prepare import build_index
from training.data.synth.generate import SynthConfig, generate
from training.data.synth.raycast import cast_rays
from training.data.synth.render import pixel_rays
from training.data.synth.rig import Sensor, camera_rig

SMALL = dict(image_size=(225, 400), ray_scale=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(scenes=2, frames=2, seed=3, val_scenes=1, **SMALL), progress=False)
    return root


@pytest.fixture(scope="module")
def index(dataset) -> dict:
    return build_index(dataset, progress=False)


def _wall_scene():
    """A 8 x 4 x 2 m room of 0.4 m voxels with a wall two voxels thick at x = 4.0 .. 4.8 m."""
    grid = GridSpec(x_range=(0.0, 8.0), y_range=(-2.0, 2.0), z_range=(0.0, 2.0), voxel_size=0.4)
    occupied = np.zeros(grid.shape, bool)
    occupied[10:12] = True
    camera = Sensor(
        "CAM",
        (0.2, 0.0, 1.0),
        camera_rig()[1].rotation,
        np.array([[40.0, 0.0, 40.0], [0.0, 40.0, 20.0], [0.0, 0.0, 1.0]]),
        (40, 80),
    )
    u, v = np.meshgrid(np.arange(80) + 0.0, np.arange(40) + 0.0)
    directions = pixel_rays(camera, u, v).reshape(-1, 3)
    return grid, occupied, camera, directions


def test_rays_stop_at_the_first_layer_of_a_wall():
    grid, occupied, camera, directions = _wall_scene()
    visible = np.zeros(grid.shape, bool)
    hits = cast_rays(occupied, grid, np.asarray(camera.translation), directions, visible)
    origin = np.asarray(camera.translation)
    # Rays that reach the wall plane x = 4.0 inside the room hit it exactly there.
    t_wall = (4.0 - origin[0]) / directions[:, 0]
    at_wall = origin + t_wall[:, None] * directions
    inside = np.all(
        (at_wall[:, 1:] > grid.lower[1:] + 1e-6) & (at_wall[:, 1:] < [2.0 - 1e-6, 2.0 - 1e-6]), axis=1
    )
    assert inside.sum() > 100
    np.testing.assert_allclose(hits.t[inside], t_wall[inside], rtol=1e-9)
    assert np.all(hits.voxel[inside, 0] == 10) and np.all(hits.axis[inside] == 0)
    assert not np.any(hits.hit[~inside])
    # Visibility: the wall's first layer yes, its second layer and everything behind no.
    assert visible[10].any() and not visible[11:].any()
    # Brute force: points sampled densely along each ray up to just past its hit are all visible.
    steps = np.linspace(0.0, 1.0, 2001)[:, None, None]
    t_end = np.where(hits.hit, hits.t + 0.005, 20.0)
    points = origin + steps * t_end[None, :, None] * directions[None]
    index, ok = grid.to_index(points.reshape(-1, 3))
    reference = np.zeros(grid.shape, bool)
    reference[tuple(index[ok].T)] = True
    assert np.array_equal(reference & ~visible, np.zeros_like(visible))
    assert (visible & ~reference).sum() <= 0.02 * visible.sum()  # only corners the sampling skipped
    # The free voxels straight ahead of the camera are visible.
    assert visible[1:10, 5, 2].all()


def test_labels_have_occ3d_layout(dataset, index):
    sample = index["train"][0]
    labels = np.load(dataset / sample["occ_path"])
    for key in ("semantics", "mask_lidar", "mask_camera"):
        assert labels[key].dtype == np.uint8 and labels[key].shape == OCC3D_GRID.shape
    semantics = labels["semantics"]
    assert semantics.max() <= FREE_CLASS
    assert set(np.unique(labels["mask_camera"])) <= {0, 1}
    # The ground layer is everywhere, the ego's own place is free, the cameras see a good share.
    assert np.all(semantics[:, :, 2] != FREE_CLASS)
    assert np.all(semantics[98:102, 98:102, 3:] == FREE_CLASS)
    assert 0.02 < labels["mask_camera"].mean() < 0.6 and 0.01 < labels["mask_lidar"].mean() < 0.6
    # Nothing hidden under the ground is visible.
    assert not labels["mask_camera"][:, :, :2].any()


def test_lidar_points_lie_in_occupied_lidar_visible_voxels(dataset, index):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version="v1.0-trainval", dataroot=str(dataset), verbose=False)
    sample = nusc.sample[0]
    lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    calib = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
    points = np.fromfile(dataset / lidar["filename"], dtype=np.float32).reshape(-1, 5)[:, :3].astype(float)
    assert len(points) > 10000
    # Points lie on the face where the beam entered the voxel: step 2 mm further along the beam.
    points *= 1 + 0.002 / np.linalg.norm(points, axis=1, keepdims=True)
    ego = points @ quaternion_to_matrix(calib["rotation"]).T + calib["translation"]
    voxel, inside = OCC3D_GRID.to_index(ego)
    entry = next(s for s in index["train"] + index["val"] if s["token"] == sample["token"])
    labels = np.load(dataset / entry["occ_path"])
    assert inside.sum() > 5000
    # A few beams graze a voxel edge, where the step lands in a neighbour.
    hit = tuple(voxel[inside].T)
    assert np.mean((labels["semantics"][hit] != FREE_CLASS) & (labels["mask_lidar"][hit] == 1)) > 0.999


def _project(sample: dict, camera: str, points_ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    calib = sample["cameras"][camera]
    ego2cam = np.linalg.inv(pose_matrix(calib["sensor2ego"]["translation"], calib["sensor2ego"]["rotation"]))
    cam = points_ego @ ego2cam[:3, :3].T + ego2cam[:3, 3]
    uvw = cam @ np.asarray(calib["intrinsic"]).T
    return uvw[:, :2] / uvw[:, 2:], cam[:, 2]


def test_labelled_voxels_project_onto_their_colour(dataset, index):
    """Visible car voxels (body height) land on blue car pixels; road surface on grey asphalt."""
    checked = {"car": [0, 0], "driveable_surface": [0, 0]}
    for sample in index["train"] + index["val"]:
        labels = np.load(dataset / sample["occ_path"])
        centres = OCC3D_GRID.voxel_centers()
        visible = labels["mask_camera"].astype(bool)
        car = visible & (labels["semantics"] == CLASS_NAMES.index("car"))
        car[:, :, [0, 1, 2, 3, 5, 6, 7]] = False  # body layer (0.6..1.0 m): no windows, no wheels
        road = visible & (labels["semantics"] == CLASS_NAMES.index("driveable_surface"))
        near = np.linalg.norm(centres[..., :2], axis=-1) < 25
        for name, mask, lift in (("car", car & near, 0.0), ("driveable_surface", road & near, 0.2)):
            points = centres[mask] + [0.0, 0.0, lift]  # the road's visible face is its top
            for camera in sample["cameras"]:
                image = cv2.imread(str(dataset / sample["cameras"][camera]["image_path"]))[..., ::-1]
                uv, depth = _project(sample, camera, points)
                ok = (depth > 1.0) & np.all(
                    (uv >= 2) & (uv < [image.shape[1] - 2, image.shape[0] - 2]), axis=1
                )
                rgb = image[uv[ok, 1].astype(int), uv[ok, 0].astype(int)].astype(float)
                if name == "car":
                    good = rgb[:, 2] / rgb.sum(axis=1) > 0.48
                else:
                    good = (rgb.max(axis=1) - rgb.min(axis=1) < 30) & (rgb.mean(axis=1) < 130)
                checked[name][0] += good.sum()
                checked[name][1] += ok.sum()
    for name, (good, total) in checked.items():
        assert total > 50, name
        assert good / total > 0.75, (name, good, total)


def test_devkit_reads_the_tables_and_boxes_match_the_labels(dataset, index):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version="v1.0-trainval", dataroot=str(dataset), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 4
    by_token = {s["token"]: s for s in index["train"] + index["val"]}
    agree = total = 0
    for sample in nusc.sample:
        labels = np.load(dataset / by_token[sample["token"]]["occ_path"])["semantics"]
        pose = by_token[sample["token"]]["ego2global"]
        global2ego = np.linalg.inv(pose_matrix(pose["translation"], pose["rotation"]))
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            centre = global2ego[:3, :3] @ ann["translation"] + global2ego[:3, 3]
            voxel, inside = OCC3D_GRID.to_index(centre[None])
            if not inside[0]:
                continue
            expected = ann["category_name"]
            name = CLASS_NAMES[labels[tuple(voxel[0])]]
            agree += {"vehicle.car": "car", "human.pedestrian.adult": "pedestrian"}.get(expected) == name or (
                expected.split(".")[-1] in name or name in expected
            )
            total += 1
        # A box is an upright yaw rotation.
        rotation = quaternion_to_matrix(nusc.get("sample_annotation", sample["anns"][0])["rotation"])
        np.testing.assert_allclose(rotation[2], [0, 0, 1], atol=1e-9)
    assert total > 20 and agree / total > 0.9


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_files(tmp_path):
    config = SynthConfig(scenes=1, frames=2, seed=7, val_scenes=0, image_size=(90, 160), ray_scale=2)
    generate(tmp_path / "a", config, progress=False)
    generate(tmp_path / "b", config, progress=False)
    generate(tmp_path / "c", SynthConfig(**{**config.__dict__, "seed": 8}), progress=False)
    first = _digest(tmp_path / "a")
    assert first == _digest(tmp_path / "b")
    assert len(first) == 1 + 1 + 13 + 2 * (
        6 + 6 + 1 + 1
    )  # splits, map, tables; per frame jpg, 2D, LiDAR, gts
    assert first != _digest(tmp_path / "c")


def test_2d_labels_agree_with_the_voxels(dataset, index):
    """The 2D depth labels, lifted back to 3D through the calibration, land in voxels of their class."""
    sample = index["train"][1]
    labels = np.load(dataset / sample["occ_path"])["semantics"]
    agree = total = 0
    for camera, path in sample["labels_2d"].items():
        label = np.load(dataset / path)
        calib = sample["cameras"][camera]
        uv, depth = label["uv"].astype(float), label["depth"].astype(float)
        assert label["semantics"].dtype == np.uint8 and len(uv) == len(depth) == len(label["semantics"])
        rays = np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(np.asarray(calib["intrinsic"])).T
        sensor2ego = pose_matrix(calib["sensor2ego"]["translation"], calib["sensor2ego"]["rotation"])
        # The depth is the surface's: step 5 cm further along the ray to be inside the voxel.
        points = (rays * (depth + 0.05 * np.linalg.norm(rays, axis=1))[:, None]) @ sensor2ego[:3, :3].T
        voxel, inside = OCC3D_GRID.to_index(points + sensor2ego[:3, 3])
        agree += np.sum(labels[tuple(voxel[inside].T)] == label["semantics"][inside])
        total += inside.sum()
    assert total > 1000 and agree / total > 0.97


def test_2d_labels_and_sky_pixels_share_one_pixel_lattice(dataset, index):
    """Every labelled pixel and every sky pixel lie on the labels' lattice (one per label_stride rays),
    none is both, and the sky is where the cameras look up: above the labelled pixels on average."""
    sample = index["train"][0]
    sky_pixels = 0
    for path in sample["labels_2d"].values():
        label = np.load(dataset / path)
        uv, sky = label["uv"], label["sky_uv"]
        assert sky.dtype == uv.dtype == np.float32
        assert not {tuple(p) for p in uv.tolist()} & {tuple(p) for p in sky.tolist()}
        lattice = np.r_[uv, sky]
        assert len(np.unique(lattice[:, 0])) * len(np.unique(lattice[:, 1])) == len(lattice)
        if len(sky):
            assert sky[:, 1].mean() < uv[:, 1].mean()
        sky_pixels += len(sky)
    assert sky_pixels > 100
