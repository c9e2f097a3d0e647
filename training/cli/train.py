"""`occ train`: train a named config on a prepared data root (also under `torchrun --nproc_per_node=N`)."""

import argparse
from pathlib import Path

HELP = "Train an occupancy model on a data root indexed by `occ prepare` (torchrun for several processes)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="model config name (see `occ models`)")
    parser.add_argument("--data-root", type=Path, required=True, help="data root with occ_index_train.json")
    parser.add_argument("--work-dir", type=Path, required=True,
                        help="where checkpoints, train.log, tensorboard/ and training_curve.png go")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--max-epochs", type=int, help="epochs to train (default: the config's recipe)")
    length.add_argument("--max-iters", type=int, help="iterations to train, instead of epochs")
    parser.add_argument("--batch-size", type=int, help="samples per process and forward pass (default: the "
                        "recipe's)")
    parser.add_argument("--global-batch", type=int,
                        help="samples per optimiser step over all processes, reached by gradient "
                             "accumulation (default: the recipe's, 32 for the reference configs)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--num-workers", type=int, default=2, help="loader processes per trainer")
    parser.add_argument("--checkpoint-interval", type=int, default=1000,
                        help="write a checkpoint every N iterations (and always at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from --work-dir's newest checkpoint")
    parser.add_argument("--load-from", type=Path, help="initial weights: our checkpoint or a reference one "
                        "(strict: every key must match, unless --partial)")
    parser.add_argument("--partial", action="store_true",
                        help="with --load-from: load every key whose name and shape match and print what was "
                             "loaded and skipped (mmcv's non-strict load_from, e.g. a BEVDet detection "
                             "checkpoint under a fresh occupancy head)")
    parser.add_argument("--pretrained", type=Path,
                        help="ImageNet weights for the image backbone (torchvision ResNet or Swin layout), "
                             "loaded before --load-from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute backbone activations in the backward pass (less memory, more time)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--amp", action="store_true",
                           help="mixed precision: bf16 autocast where the device has it, else fp16 with loss "
                                "scaling (faster, less memory; the reference configs train in float32)")
    precision.add_argument("--fp32", action="store_true",
                           help="float32 throughout, also where the recipe asks for mixed precision "
                                "(demo-tiny: bf16 on CPUs)")
    parser.add_argument("--supervision",
                        help="what the model learns from: 3d = the Occ3D voxel labels, 2d = per-pixel depth "
                             "and semantic labels through the rendering head alone (RenderOcc's 2D-only "
                             "training), 3d+2d = both (default: the config's recipe)")
    parser.add_argument("--log-interval", type=int, default=10, help="iterations between log lines")


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from occupancy.errors import InputError
    from training.recipe import SUPERVISIONS
    from training.train import TrainOptions, train

    counts = ("max_epochs", "max_iters", "batch_size", "global_batch", "num_workers", "checkpoint_interval",
              "log_interval")
    if args.partial and not args.load_from:
        raise InputError("--partial: needs --load-from")
    if args.supervision is not None and args.supervision not in SUPERVISIONS:
        raise InputError(f"--supervision: expected one of {', '.join(SUPERVISIONS)}, "
                         f"got {args.supervision!r}")
    for name in counts:
        value = getattr(args, name)
        if value is not None and value < (0 if name == "num_workers" else 1):
            raise InputError(f"--{name.replace('_', '-')}: must be positive, got {value}")
    logging.basicConfig(level=logging.WARNING)
    final = train(TrainOptions(
        config=args.config, data_root=args.data_root, work_dir=args.work_dir, max_epochs=args.max_epochs,
        max_iters=args.max_iters, batch_size=args.batch_size, global_batch=args.global_batch, lr=args.lr,
        num_workers=args.num_workers, checkpoint_interval=args.checkpoint_interval, resume=args.resume,
        load_from=args.load_from, partial=args.partial, pretrained=args.pretrained, seed=args.seed,
        grad_checkpointing=args.grad_checkpointing, fp32=args.fp32, amp=args.amp,
        log_interval=args.log_interval, supervision=args.supervision,
    ))
    if os.environ.get("RANK", "0") == "0":
        print(f"final checkpoint: {final}")
    return 0
