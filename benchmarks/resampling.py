"""The gateway's fast image path against the reference's PIL resampling, on a served model's grids.

    python -m benchmarks.resampling [--model model_repository/demo-tiny/2/model.onnx] \
        [--data-root work/synth-demo] [--frames 30]

Per frame (examples/frame/, then the val frames of a data root): the model's grid from the fast path
(JPEG decoded at reduced scale, OpenCV area + bilinear) and from the reference path (a full decode and
PIL's bicubic resize), the share of voxels whose class differs (all voxels, and those the cameras see),
and the time each path takes to make the six model inputs. With a data root it also scores both paths
against the ground truth (Occ3D mIoU), so the accuracy cost of the fast path shows.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.http_predict import load_average
from benchmarks.timing import markdown_table, report_header
from clients.dataset import dataset_frame
from occupancy import model_contract as contract
from occupancy.cameras import CAMERA_NAMES
from occupancy.data_root import load_index, read_labels
from occupancy.metrics import OccupancyMetric
from occupancy.network_input import FAST, REFERENCE, RESAMPLINGS
from service.pipeline import Frame, check_headers, prepare_inputs

EXAMPLE = Path("examples/frame")


def grids(session: ort.InferenceSession, frame: Frame, input_size: tuple[int, int]) -> dict:
    """{resampling: (grid, seconds to make the inputs)} for one frame."""
    headers = check_headers(frame, 2**30)
    out = {}
    for resampling in RESAMPLINGS:
        started = time.perf_counter()
        inputs, _ = prepare_inputs(frame, headers, input_size, resampling=resampling)
        seconds = time.perf_counter() - started
        out[resampling] = (session.run([contract.SEMANTICS], inputs)[0][0], seconds)
    return out


def example_frame() -> tuple[Frame, Path]:
    from occupancy.calibration import parse_calibration

    images = {name: (EXAMPLE / f"{name}.jpg").read_bytes() for name in CAMERA_NAMES}
    calibration = parse_calibration((EXAMPLE / "calibration.json").read_text())
    return Frame(images, calibration), EXAMPLE / "labels.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model.onnx (default: demo-tiny's newest)")
    parser.add_argument("--data-root", type=Path, help="also score the val frames of this data root")
    parser.add_argument("--frames", type=int, default=30, help="val frames at most")
    args = parser.parse_args()
    start_load = load_average()
    model = args.model or max(Path("model_repository/demo-tiny").glob("[0-9]*/model.onnx"),
                              key=lambda path: int(path.parent.name))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    metadata = contract.ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(model))
    frames = [example_frame()]
    if args.data_root:
        for index in range(min(args.frames, len(load_index(args.data_root, "val")))):
            sample = dataset_frame(args.data_root, "val", index=index)
            images = {name: path.read_bytes() for name, path in sample.images.items()}
            frames.append((Frame(images, sample.calibration), sample.labels))
    rows, metrics, seconds = [], {r: OccupancyMetric() for r in RESAMPLINGS}, {r: [] for r in RESAMPLINGS}
    differing = []
    for index, (frame, labels_path) in enumerate(frames):
        result = grids(session, frame, metadata.input_size)
        truth = read_labels(labels_path)
        visible = truth.mask_camera.astype(bool)
        changed = result[FAST][0] != result[REFERENCE][0]
        differing.append((changed.mean(), changed[visible].mean()))
        for resampling, (grid, spent) in result.items():
            seconds[resampling].append(spent)
            if index > 0:  # the example frame is one of the val frames of the demo world
                metrics[resampling].update(grid, truth.semantics, truth.mask_camera)
        if index == 0:
            rows.append(["examples/frame", f"{changed.mean():.3%}", f"{changed[visible].mean():.3%}", "", ""])
    if len(frames) > 1:
        share = np.array(differing[1:])
        rows.append([f"{args.data_root} val, {len(frames) - 1} frames", f"{share[:, 0].mean():.3%}",
                     f"{share[:, 1].mean():.3%}", f"{metrics[FAST].miou():.2f}",
                     f"{metrics[REFERENCE].miou():.2f}"])
    print(f"`python -m benchmarks.resampling --model {model}"
          + (f" --data-root {args.data_root} --frames {args.frames}`" if args.data_root else "`"))
    print("\n".join(report_header(start_load)))
    print()
    print(markdown_table(["frames", "voxels differing (all)", "voxels differing (camera-visible)",
                          "mIoU fast", "mIoU reference"], rows))
    print()
    timing = [[r, f"{1000 * np.median(seconds[r]):.1f}"] for r in RESAMPLINGS]
    print(markdown_table(["resampling", "six model inputs, ms (median)"], timing))


if __name__ == "__main__":
    main()
