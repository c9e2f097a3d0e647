"""The clients with temporal models: `occ predict --scene` streams a scene in order, `occ bench --sequences`
drives many sequences at once, `occ render` draws a sequence as a strip or an animation."""

import json

import cv2
import numpy as np
import pytest
from service_fixtures import build_test_model, write_model
from tiny_dataset import write_tiny_dataset

from clients.local_gateway import running_gateway
from clients.render import LoadedGrid, bev_image, write_sequence
from occ.cli import main
from occupancy.classes import FREE_CLASS
from occupancy.errors import InputError

INPUT_SIZE = (32, 64)
FRAMES = 3


def grid_with(value: int) -> np.ndarray:
    grid = np.full((200, 200, 16), FREE_CLASS, np.uint8)
    grid[90:110, 90:110, :value] = 4
    return grid


def test_a_sequence_is_drawn_as_a_strip_or_an_animation(tmp_path):
    grids = [LoadedGrid(grid_with(k + 1), None, f"frame {k}") for k in range(10)]
    strip = cv2.imread(str(write_sequence(tmp_path / "strip.png", grids, cell=1)))
    bev = bev_image(grids[0].semantics, cell=1)
    assert strip.shape[1] > 8 * bev.shape[1] and strip.shape[0] > 2 * bev.shape[0]  # 8 a row, then a second
    video = cv2.VideoCapture(str(write_sequence(tmp_path / "drive.avi", grids, fps=4)))
    frames = 0
    while video.read()[0]:
        frames += 1
    assert frames == len(grids)
    with pytest.raises(InputError, match=r"\.png, \.mp4, \.avi"):
        write_sequence(tmp_path / "drive.gif", grids)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`occ serve` with a temporal test model, and a data root of one scene of three 2 Hz keyframes."""
    root = tmp_path_factory.mktemp("sequences")
    write_model(root / "repository", "fake-temporal", (1,), build_test_model(INPUT_SIZE, temporal=True))
    data_root = write_tiny_dataset(root / "data", scenes=1, frames=FRAMES, val_scenes=1)
    with running_gateway("--repository", str(root / "repository"), log_path=root / "server.log") as url:
        yield url, data_root


@pytest.mark.integration
def test_occ_predict_streams_a_scene_in_order(served, tmp_path, capsys):
    url, data_root = served
    code = main(["predict", "--url", url, "--data-root", str(data_root), "--scene", "scene-0000",
                 "--out", str(tmp_path / "grids"), "--render", str(tmp_path / "scene.png")])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    frames = [line for line in printed if line.startswith("frame ")]
    assert [line.split(":")[1].split(";")[0].strip() for line in frames] == [
        "history 0", "history 1, t-1 0.500 s back", "history 2, t-1 0.500 s back"]
    assert len(list((tmp_path / "grids").glob("*.npy"))) == FRAMES and (tmp_path / "scene.png").stat().st_size
    code = main(["render", *map(str, sorted((tmp_path / "grids").glob("*.npy"))), "--out",
                 str(tmp_path / "scene.mp4")])
    assert code == 0 and (tmp_path / "scene.mp4").stat().st_size > 0
    capsys.readouterr()
    assert main(["predict", "--url", url, "--data-root", str(data_root), "--scene", "nowhere"]) == 2
    assert "scene-0000" in capsys.readouterr().err


@pytest.mark.integration
def test_occ_bench_drives_many_sequences(served, tmp_path, capsys):
    url, data_root = served
    code = main(["bench", "--url", url, "--data-root", str(data_root), "--sequences", "4",
                 "--requests", "12", "--json", str(tmp_path / "bench.json")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["ok"] == result["requests"] == 12 and result["concurrency"] == 4
    assert set(result["histories"]) <= {"0", "1", "2"} and result["histories"].get("2", 0) >= 1
    assert sum(result["histories"].values()) == 12
    assert "4 sequences streaming scene scene-0000 (3 frames)" in printed
    for flags in (["--sequences", "2000"], ["--sequences", "2", "--rate", "2"]):
        assert main(["bench", "--url", url, "--data-root", str(data_root), *flags]) == 2
