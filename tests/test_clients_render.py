"""Pictures of grids: colours at known voxel columns, the painter's order, comparisons, and `occ render`."""

import cv2
import numpy as np
import pytest

from clients.render import (
    BACKGROUND,
    LoadedGrid,
    ObliqueView,
    bev_image,
    load_grid,
    oblique_image,
    top_voxels,
    write_picture,
)
from occ.cli import main
from occupancy.classes import CLASS_COLORS, CLASS_NAMES, FREE_CLASS
from occupancy.errors import InputError

CAR, TRUCK, DRIVEABLE, VEGETATION = (CLASS_NAMES.index(n) for n in ("car", "truck", "driveable_surface",
                                                                     "vegetation"))


def bgr(class_index: int) -> np.ndarray:
    return np.array(CLASS_COLORS[class_index][::-1])


def empty_grid() -> np.ndarray:
    return np.full((200, 200, 16), FREE_CLASS, np.uint8)


def test_top_voxels_match_a_loop_over_columns():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 17, (20, 30, 16))
    grid = np.where(rng.random((20, 30, 16)) < 0.1, classes, FREE_CLASS).astype(np.uint8)
    top_class, top_z = top_voxels(grid)
    for x in range(20):
        for y in range(30):
            occupied = [z for z in range(16) if grid[x, y, z] != FREE_CLASS]
            assert top_z[x, y] == (occupied[-1] if occupied else -1)
            assert top_class[x, y] == (grid[x, y, occupied[-1]] if occupied else FREE_CLASS)


def test_bird_eye_view_colours_known_columns():
    grid = empty_grid()
    grid[150, 40, 15] = CAR  # 20 m ahead, 24 m to the right, at the top level
    grid[150, 40, 2] = DRIVEABLE  # below it: hidden from above
    grid[30, 170, 3] = VEGETATION  # 28 m behind, 28 m to the left, low
    cell = 3
    image = bev_image(grid, cell=cell)
    assert image.shape == (600, 600, 3)

    def pixel(x: int, y: int) -> np.ndarray:  # forward is up, left is left
        return image[(199 - x) * cell + 1, (199 - y) * cell + 1].astype(int)

    assert np.array_equal(pixel(150, 40), bgr(CAR))
    assert pixel(150, 40)[0] > 200 and pixel(150, 40)[2] < 10  # really car blue, in BGR
    low = pixel(30, 170)
    assert np.all(low <= bgr(VEGETATION)) and low[1] < bgr(VEGETATION)[1]  # lower: the same hue, darker
    assert low[1] > 0 and low[0] == low[2] == 0
    assert np.array_equal(pixel(0, 0), BACKGROUND) and np.array_equal(pixel(199, 199), BACKGROUND)
    assert image[:cell * 140, :].reshape(-1, 3).tolist().count(bgr(CAR).tolist()) == cell * cell

    mask = np.ones(grid.shape, bool)
    mask[150, 40, 15] = False
    greyed = bev_image(grid, mask, cell)[(199 - 150) * cell + 1, (199 - 40) * cell + 1].astype(int)
    assert not np.array_equal(greyed, bgr(CAR)) and np.ptp(greyed) < np.ptp(bgr(CAR))


def test_oblique_view_hides_what_lies_behind():
    grid = empty_grid()
    grid[100, 100, 5] = CAR
    grid[100, 100, 6] = TRUCK  # on top of the car: the car's top face is hidden
    image = oblique_image(grid)
    colours = {tuple(c) for c in image.reshape(-1, 3).tolist()} - {BACKGROUND}
    assert tuple(bgr(TRUCK)) in colours  # the truck's top face, unshaded
    assert tuple(bgr(CAR)) not in colours  # the car's top face is under the truck
    car_sides = {tuple(np.round(bgr(CAR) * shade).astype(int).tolist()) for shade in (0.78, 0.6)}
    assert car_sides <= colours

    view = ObliqueView()
    assert view.direction[2] < 0  # looking down
    assert np.allclose(view.projection @ view.direction, 0)  # the view collapses its own direction


def test_compare_picture_and_render_cli(tmp_path, capsys):
    truth = empty_grid()
    truth[80:120, 90:110, 2] = DRIVEABLE
    truth[110:120, 95:100, 3:6] = CAR
    predicted = truth.copy()
    predicted[110:120, 95:100, 3:6] = TRUCK
    np.save(tmp_path / "pred.npy", predicted)
    np.savez(tmp_path / "labels.npz", semantics=truth, mask_camera=np.ones_like(truth))
    code = main(["render", str(tmp_path / "pred.npy"), "--compare", str(tmp_path / "labels.npz"),
                 "--out", str(tmp_path / "cmp.png"), "--mask-camera"])
    assert code == 0 and "cmp.png" in capsys.readouterr().out
    picture = cv2.imread(str(tmp_path / "cmp.png"))
    single = write_picture(tmp_path / "one.png", LoadedGrid(predicted, None, "pred"))
    one = cv2.imread(str(single))
    assert picture.shape[1] > one.shape[1] and picture.shape[0] > one.shape[0]
    # Three bird's-eye panels (two grids and the difference map) across the top row.
    assert picture.shape[1] >= 3 * 600

    camera = tmp_path / "front.png"
    cv2.imwrite(str(camera), np.full((90, 160, 3), 200, np.uint8))
    code = main(["render", str(tmp_path / "pred.npy"), "--camera-images", f"CAM_FRONT={camera}",
                 "--out", str(tmp_path / "cams.png")])
    assert code == 0 and cv2.imread(str(tmp_path / "cams.png")).shape[0] > one.shape[0]


def test_bad_grid_files_are_one_line_errors(tmp_path, capsys):
    np.savez(tmp_path / "other.npz", labels=empty_grid())
    with pytest.raises(InputError, match="no 'semantics'"):
        load_grid(tmp_path / "other.npz")
    np.save(tmp_path / "float.npy", np.zeros((200, 200, 16)))
    assert main(["render", str(tmp_path / "float.npy"), "--out", str(tmp_path / "x.png")]) == 2
    assert main(["render", str(tmp_path / "missing.npy")]) == 2
    assert main(["render", str(tmp_path / "float.npy"), "--camera-images", "CAM_TOP=x.jpg"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "float64" in errors[0] and "no such file" in errors[1]
    assert "CAM_TOP" in errors[2]


def test_clients_import_neither_torch_nor_the_other_packages():
    import subprocess
    import sys

    code = ("import sys, clients.client, clients.dataset, clients.render, clients.bench, "
            "clients.predict_cli, clients.render_cli, clients.bench_cli; "
            "assert not {'torch', 'training', 'service', 'fastapi'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
