"""Time of one demo-tiny training step on the CPU: float32 against the recipe's bf16 autocast, and the
occupancy loss over the camera-visible voxels against all voxels, in one run.

The batch is the first two training frames of a prepared data root (default `work/synth-demo`, made by
`make demo-data`) with the recipe's augmentation. A step is `training.train.train_step`: forward,
occupancy + depth loss, backward, clipping, AdamW, EMA. The loss rows time the head's loss alone
(forward + backward) on fixed logits. Run: `.venv/bin/python -m benchmarks.train_step [--repeats 5]`.
"""

import argparse
import copy
import os
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.bev_pool import median_seconds
from occupancy.data_root import index_path
from training import train as training
from training.data.dataset import OccupancyDataset, collate
from training.models.configs import build_model


def step_seconds(options: training.TrainOptions, batch, repeats: int) -> float:
    config = training.model_config(options)
    trainer = training.build_trainer(options, config, training.Distributed(0, 1, torch.device("cpu")), 1000,
                                     build_model(config))
    trainer.model.train()
    return median_seconds(lambda: training.train_step(trainer, [batch]), repeats)


def loss_seconds(head: torch.nn.Module, logits: torch.Tensor, targets, repeats: int) -> float:
    def forward_backward() -> None:
        leaf = logits.clone().requires_grad_()
        head.loss(leaf, targets).backward()

    return median_seconds(forward_backward, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("work/synth-demo"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    index = index_path(args.data_root, "train")
    if not index.is_file():
        raise SystemExit(f"{index}: missing; run `make demo-data` first")
    options = training.TrainOptions(config="demo-tiny", data_root=args.data_root, work_dir=Path("unused"))
    config = training.model_config(options)
    dataset = OccupancyDataset(args.data_root, "train", config.input_size,
                               config.recipe.augment, depth=True)
    batch = collate([dataset[0], dataset[1]])
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, demo-tiny, "
          f"batch 2, median of {args.repeats} runs after one warm-up")
    print("| what | float32 s | bf16 autocast s | float32 / bf16 |")
    print("| --- | --- | --- | --- |")
    fp32 = step_seconds(replace(options, fp32=True), batch, args.repeats)
    bf16 = step_seconds(options, batch, args.repeats)
    print(f"| training step | {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f} |")

    model = build_model(config).eval()
    targets = batch.targets("cpu")
    with torch.no_grad():
        logits = model(batch.camera_batch("cpu"))
    visible = loss_seconds(model.occ_head, logits, targets, args.repeats)
    unmasked = copy.copy(model.occ_head)
    unmasked.use_mask = False
    everywhere = loss_seconds(unmasked, logits, targets, args.repeats)
    share = targets.mask_camera.float().mean().item()
    print()
    print("| occupancy loss (forward + backward, float32) | s | all voxels / visible |")
    print("| --- | --- | --- |")
    print(f"| visible voxels only ({share:.0%} of the grid; use_mask=True) | {visible:.3f} | "
          f"{everywhere / visible:.2f} |")
    print(f"| all voxels (use_mask=False) | {everywhere:.3f} | 1.00 |")


if __name__ == "__main__":
    main()
