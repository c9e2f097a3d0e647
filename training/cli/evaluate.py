"""`occ eval`: Occ3D mIoU and RayIoU of a checkpoint, an exported ONNX model, or saved predictions."""

import argparse
from pathlib import Path

from occupancy.network_input import FAST, RESAMPLINGS

HELP = ("Evaluate occupancy (Occ3D per-class IoU and mIoU, SparseOcc's RayIoU at 1, 2 and 4 m): "
        "a checkpoint, an ONNX model or saved predictions.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint of `occ train` or a reference one")
    source.add_argument("--onnx", type=Path, help="an exported ONNX model (run with ONNX Runtime; a temporal "
                        "one streams each scene's frames in order through its state, as it is served)")
    source.add_argument("--pred-dir", type=Path, help="saved predictions <scene>/<token>/pred.npz")
    parser.add_argument("--config", help="model config name (needed for reference checkpoints)")
    parser.add_argument("--data-root", type=Path,
                        help="data root with occ_index_<split>.json (its poses give the RayIoU rays)")
    parser.add_argument("--gt-root", type=Path, help="with --pred-dir: <scene>/<token>/labels.npz "
                        "(default: the data root's gts/; without --data-root no RayIoU)")
    parser.add_argument("--split", default="val", choices=("train", "val"), help="default: %(default)s")
    parser.add_argument("--resampling", choices=RESAMPLINGS, default=FAST,
                        help="fast: the gateway's default (reduced JPEG decoding, OpenCV); reference: a "
                             "full decode and PIL's bicubic resize, as the reference pipelines "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--save-preds", type=Path, help="store predictions as <dir>/<scene>/<token>/pred.npz")
    parser.add_argument("--json", type=Path, help='write {"mIoU": ..., "per_class": {...}, "RayIoU": ..., '
                        '"RayIoU@1": ..., "ray_per_class": {...}} (percent) here')


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from occupancy.data_root import load_index
    from occupancy.errors import InputError
    from training import evaluate
    from training.models.checkpoint import load_model

    origins = evaluate.scene_ray_origins(load_index(args.data_root, args.split)) if args.data_root else None
    if args.pred_dir:
        gt_root = args.gt_root or (args.data_root / "gts" if args.data_root else None)
        if gt_root is None:
            raise InputError("--pred-dir needs --gt-root (or --data-root, whose gts/ is used)")
        scores = evaluate.evaluate_saved(gt_root, args.pred_dir, origins)
    else:
        if args.data_root is None:
            raise InputError("--data-root: required with --checkpoint or --onnx")

        def loader(input_size: tuple[int, int], history_frames: int = 0):
            return evaluate.eval_loader(args.data_root, args.split, input_size, args.batch_size,
                                        args.num_workers, args.resampling, history_frames)

        if args.onnx:
            session, metadata = evaluate.onnx_session(args.onnx)
            predictions = evaluate.predict_onnx(session, metadata, loader(metadata.input_size))
        else:
            model, config = load_model(args.checkpoint, args.config)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            predictions = evaluate.predict_torch(model, loader(config.input_size, config.history_frames),
                                                 device)
        scores = evaluate.accumulate(predictions, args.save_preds, origins)
    print(scores.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(evaluate.metric_json(scores), indent=2) + "\n")
    return 0
