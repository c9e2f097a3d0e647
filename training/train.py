"""Training: FlashOCC's recipe in plain PyTorch, with exact resume and torchrun data parallelism.

The recipe (training/recipe.py; every FlashOCC occupancy config): AdamW lr 1e-4 at a global batch of
32, weight decay 1e-2, gradients clipped to norm 5, a linear warm-up over 200 iterations from
0.001 x lr, then a constant lr (the configs' step at epoch 24 of 24 never fires), and MEGVII's EMA of
the weights (decay 0.999 ramped by 1 - exp(-updates / 2000), starting at 10560 updates). The EMA
weights are the ones evaluated and exported, so a checkpoint's `state_dict` holds them and
`train_state_dict` the raw weights. Fewer processes than the recipe's global batch needs accumulate
gradients over several batches per step, so one GPU takes the reference's steps at its learning rate.

`train_step` is the one place where a step happens. Everything a run depends on lives in the
checkpoint (the config's values, weights, optimiser, scheduler, EMA, grad scaler, step and position
within the epoch, RNG states), so 20 iterations + resume + 20 iterations equal 40 straight ones, bit
for bit on a CPU. Under `torchrun --nproc_per_node=N` each process trains a shard (DistributedSampler)
of a DistributedDataParallel model; only rank 0 writes files.
"""

import itertools
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from occupancy.errors import InputError
from training.data.dataset import OccupancyDataset, SampleBatch, collate
from training.data.rays import label_source
from training.models.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_config,
    extract_state_dict,
    load_checkpoint,
    load_state_dict_partial,
    read_checkpoint,
)
from training.models.configs import ModelConfig, build_model, config_to_dict, get_config
from training.models.nerf_head import nerf_head_config
from training.models.pretrained import BACKBONE, load_pretrained_backbone
from training.models.render_occ_head import RENDEROCC_TEST_THRESHOLD
from training.recipe import TrainRecipe

log = logging.getLogger("occ.train")


@dataclass(frozen=True)
class TrainOptions:
    """One run, as `occ train` takes it; None means the recipe's value."""

    config: str
    data_root: Path
    work_dir: Path
    max_epochs: int | None = None
    max_iters: int | None = None
    batch_size: int | None = None  # samples per process and forward pass
    global_batch: int | None = None  # samples per optimiser step over all processes
    lr: float | None = None
    num_workers: int = 2
    checkpoint_interval: int = 1000  # iterations; the last iteration always writes one
    resume: bool = False  # continue from the newest checkpoint in work_dir
    load_from: Path | None = None  # initial weights (ours or a reference checkpoint), strict unless `partial`
    partial: bool = False  # load_from: take every key whose name and shape match (mmcv's non-strict load)
    pretrained: Path | None = None  # an ImageNet checkpoint for the image backbone, loaded before load_from
    seed: int = 0
    grad_checkpointing: bool = False
    fp32: bool = False  # no autocast, whatever the recipe says
    amp: bool = False  # autocast (bf16 where the device has it, else fp16), whatever the recipe says
    supervision: str | None = None  # one of training/recipe.py SUPERVISIONS; None: the recipe's
    log_interval: int = 10
    progress: bool = True  # tqdm bar on rank 0


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPUs), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(int(os.environ.get("RANK", "0")), world_size, device)


class ModelEMA:
    """MEGVII's EMA (BEVDepth, FlashOCC's MEGVIIEMAHook) of every floating-point weight and buffer.

    decay(n) = decay * (1 - exp(-n / 2000)) after n updates: it follows the weights early on.
    """

    def __init__(self, model: nn.Module, decay: float, updates: int) -> None:
        self.module = deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / 2000))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(current[name].detach(), alpha=1 - decay)

    def state_dict(self) -> dict:
        return {"state_dict": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = state["updates"]


class LrSchedule:
    """lr factor per iteration, as mmcv's hooks compute it: the regular factor (1 for the reference's
    constant lr, or cosine annealing from 1 to `min_ratio` over `total_iters`) times the linear
    warm-up factor, which rises from `warmup_ratio` at iteration 0 to 1 at `warmup_iters`.

    A class rather than a lambda so LambdaLR saves and restores it with the scheduler.
    """

    def __init__(self, warmup_iters: int, warmup_ratio: float, total_iters: int | None = None,
                 min_ratio: float | None = None) -> None:
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.total_iters = total_iters
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        factor = 1.0
        if self.min_ratio is not None and self.total_iters:
            progress = min(step / self.total_iters, 1.0)
            factor = self.min_ratio + 0.5 * (1.0 - self.min_ratio) * (1.0 + math.cos(math.pi * progress))
        if step < self.warmup_iters:
            factor *= 1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return factor


class SkipSampler(Sampler[int]):
    """A sampler's indices without the first `skip`: resumes an epoch where the checkpoint left it."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


@dataclass
class TrainState:
    """Where the run stands: `step` iterations done, `batch` batches into epoch `epoch`."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    history: list[tuple[int, float, float]] | None = None  # (step, mean loss, lr) per log interval


@dataclass
class Trainer:
    """The pieces a step changes; `model` may be the DDP wrapper of `raw_model`."""

    model: nn.Module
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    autocast_dtype: torch.dtype | None  # None: fp32
    grad_max_norm: float
    device: torch.device
    depth_loss_weight: float = 0.0  # the config's; > 0 adds the depth loss where batches carry gt_depth
    voxel_labels: bool = True  # the recipe's supervision: the head's 3D loss applies
    pixel_labels: bool = False  # ... the rendering losses apply


def train_step(trainer: Trainer, batches: list[SampleBatch]) -> dict[str, Tensor]:
    """One optimisation step over the batches that make up one global batch (gradients accumulate over
    them; DDP synchronises only on the last). Returns detached scalar losses averaged over the batches:
    `loss` (the one optimised), the model's named losses where voxel labels supervise (`loss_occ`, or
    `loss_3d_geo` and `loss_3d_sem`), the rendering losses (`loss_render_*`, `loss_sdf_*`) where pixel
    labels do, and `loss_depth` where depth supervision applies (all already weighted)."""
    trainer.optimizer.zero_grad(set_to_none=True)
    totals: dict[str, Tensor] = {}
    for index, batch in enumerate(batches):
        last = index == len(batches) - 1
        synchronise = nullcontext() if last or not isinstance(trainer.model, DistributedDataParallel) \
            else trainer.model.no_sync()
        with synchronise:
            losses = batch_losses(trainer, batch)
            trainer.scaler.scale(losses["loss"] / len(batches)).backward()
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + value.detach() / len(batches)
    trainer.scaler.unscale_(trainer.optimizer)  # clip the true gradients, not the scaled ones
    nn.utils.clip_grad_norm_(trainer.raw_model.parameters(), trainer.grad_max_norm)
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    if trainer.ema:
        trainer.ema.update(trainer.raw_model)
    return totals


def batch_losses(trainer: Trainer, batch: SampleBatch) -> dict[str, Tensor]:
    """The forward pass and the losses of one batch: `loss` and its parts (`train_step`'s)."""
    camera, targets = batch.camera_batch(trainer.device), batch.targets(trainer.device)
    precision = (torch.autocast(trainer.device.type, dtype=trainer.autocast_dtype)
                 if trainer.autocast_dtype else nullcontext())
    with precision:
        output, depth = trainer.model(camera, return_depth=True)
    losses = trainer.raw_model.losses(output, targets) if trainer.voxel_labels else {}
    if trainer.pixel_labels:
        losses.update(trainer.raw_model.render_losses(output, batch.rays.to(trainer.device), camera.bda))
    if trainer.depth_loss_weight > 0 and targets.gt_depth is not None:
        depth_loss = trainer.raw_model.depth_loss(depth, targets.gt_depth)
        losses["loss_depth"] = trainer.depth_loss_weight * depth_loss
    return {"loss": sum(losses.values()), **losses}


def model_config(options: TrainOptions, stored: ModelConfig | None = None) -> ModelConfig:
    """The config a run trains: the checkpoint's own when resuming (`stored`), else the named one under
    --supervision; with the backbone's gradient checkpointing switched on where asked."""
    if stored and options.supervision not in (None, stored.recipe.supervision):
        raise InputError(f"--supervision {options.supervision}: the run to resume trains with "
                         f"{stored.recipe.supervision!r}")
    config = stored or with_supervision(get_config(options.config), options.supervision)
    if options.grad_checkpointing:
        config = replace(config, backbone=replace(config.backbone, with_cp=True))
    return config


def with_supervision(config: ModelConfig, supervision: str | None) -> ModelConfig:
    """The config trained under `supervision` (None: its recipe's). Pixel labels need the rendering head:
    a config without one gets the reference's NerfHead over its grid (pmj RenderOcc's 2D-only loss
    weights). A RenderOcc head that decides occupancy by its density pair's argmax decides by pmj's
    threshold when 2D labels alone train it, since they train only the occupied score."""
    recipe = replace(config.recipe, supervision=supervision or config.recipe.supervision)
    nerf_head = config.nerf_head or (nerf_head_config(config.grid) if recipe.pixel_labels else None)
    head = config.render_occ
    if head and head.test_threshold is None and not recipe.voxel_labels:
        head = replace(head, test_threshold=RENDEROCC_TEST_THRESHOLD)
    return replace(config, recipe=recipe, nerf_head=nerf_head, render_occ=head)


def autocast_dtype(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """None (float32) unless mixed precision is asked for; then bf16 where the device has it (CPUs: bf16
    autocast runs everywhere, fast with AVX-512 BF16 or AMX), else fp16 with loss scaling on GPUs."""
    if not mixed_precision:
        return None
    if device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def mixed_precision(options: TrainOptions, recipe: TrainRecipe) -> bool:
    """--amp or --fp32 where given, else the recipe's choice (float32 for the reference configs)."""
    if options.amp and options.fp32:
        raise InputError("--amp and --fp32: give one or neither")
    return options.amp or (recipe.mixed_precision and not options.fp32)


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is made: `batch_size` samples per process and forward pass, `accumulation`
    forward passes per step, on `processes` processes."""

    batch_size: int
    accumulation: int
    processes: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accumulation * self.processes


def batch_plan(options: TrainOptions, recipe: TrainRecipe, processes: int) -> BatchPlan:
    """The recipe's global batch (or --global-batch) reached with --batch-size (or the recipe's) per
    process by gradient accumulation; InputError when it does not divide evenly."""
    batch_size = options.batch_size or recipe.batch_size
    wanted = options.global_batch or recipe.global_batch or batch_size * processes
    per_step = batch_size * processes
    if wanted % per_step:
        raise InputError(f"global batch {wanted} is not a multiple of {processes} process(es) x batch "
                         f"{batch_size}; choose --batch-size or --global-batch so that it is")
    return BatchPlan(batch_size, wanted // per_step, processes)


def initial_model(config: ModelConfig, options: TrainOptions) -> tuple[nn.Module, list[str]]:
    """The config's model with its initial weights, as the reference makes them: random, then an ImageNet
    backbone (`--pretrained`), then `--load-from` over the whole model (strict, or `--partial`). Also the
    log lines saying what was loaded."""
    model = build_model(config)
    report = []
    if options.pretrained:
        loaded = load_pretrained_backbone(model, options.pretrained)
        report.append(f"--pretrained {options.pretrained} into {BACKBONE}:\n{loaded.table()}")
    if options.load_from and options.partial:
        state = extract_state_dict(read_checkpoint(options.load_from), f"--load-from {options.load_from}")
        report.append(f"--load-from {options.load_from} --partial:\n"
                      f"{load_state_dict_partial(model, state).table()}")
    elif options.load_from:
        load_checkpoint(model, options.load_from)
        report.append(f"--load-from {options.load_from}: every weight loaded (strict)")
    return model, report


def build_trainer(options: TrainOptions, config: ModelConfig, env: Distributed, max_iters: int,
                  raw_model: nn.Module) -> Trainer:
    """Optimiser, schedule, precision and EMA around `raw_model` (moved to the run's device)."""
    recipe = config.recipe
    raw_model = raw_model.to(env.device)
    model = raw_model
    if env.world_size > 1:
        model = DistributedDataParallel(raw_model, device_ids=[env.device.index] if env.device.type == "cuda"
                                        else None)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=options.lr or recipe.lr,
                                  weight_decay=recipe.weight_decay)
    schedule = LrSchedule(recipe.warmup_iters, recipe.warmup_ratio, max_iters, recipe.cosine_min_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    precision = autocast_dtype(env.device, mixed_precision(options, recipe))
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == torch.float16)
    ema = ModelEMA(raw_model, recipe.ema_decay, recipe.ema_init_updates) if recipe.ema_decay else None
    return Trainer(model, raw_model, optimizer, scheduler, scaler, ema, precision, recipe.grad_max_norm,
                   env.device, config.depth_loss_weight, recipe.voxel_labels, recipe.pixel_labels)


def build_loader(dataset: OccupancyDataset, batch_size: int, options: TrainOptions, env: Distributed,
                 ) -> tuple[DataLoader, DistributedSampler, SkipSampler]:
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 seed=options.seed, drop_last=True)
    skipping = SkipSampler(sampler)
    # Its own generator: the loader's worker seeds then leave the global torch RNG alone.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=skipping, num_workers=options.num_workers,
                        collate_fn=collate, drop_last=True, pin_memory=env.device.type == "cuda",
                        generator=torch.Generator().manual_seed(options.seed))
    return loader, sampler, skipping


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, numpy and torch RNG states as tensors and plain containers (loadable with weights_only)."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, *internal = state["python"]
    random.setstate((version, tuple(internal[0]), internal[1]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(work_dir: Path, step: int) -> Path:
    return work_dir / f"iter_{step:07d}.pt"


def latest_checkpoint(work_dir: Path) -> Path | None:
    """The checkpoint with the most iterations in work_dir (temporary files never match)."""
    found = sorted(work_dir.glob("iter_*.pt"))
    return found[-1] if found else None


def save_atomic(content: dict, path: Path) -> None:
    """torch.save into a temporary file, then rename: the final name only ever holds a complete file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def checkpoint_content(trainer: Trainer, state: TrainState, options: TrainOptions, config: ModelConfig,
                       ) -> dict:
    """What rebuilds the model (the config's values, nanoGPT style) and what resumes the run exactly."""
    deployed = trainer.ema.module if trainer.ema else trainer.raw_model
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config.name,
        "model_config": config_to_dict(config),
        "state_dict": deployed.state_dict(),  # EMA weights where the recipe has an EMA
        "train_state_dict": trainer.raw_model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema else None,
        "step": state.step,
        "epoch": state.epoch,
        "batch": state.batch,
        "history": state.history,
        "rng": rng_state(),
        "options": {key: str(value) if isinstance(value, Path) else value
                    for key, value in asdict(options).items()},
    }


def read_training_checkpoint(path: Path, config_name: str) -> tuple[dict, ModelConfig]:
    """A checkpoint of `occ train` to resume from, and the config it trains (its own stored values)."""
    content = read_checkpoint(path)
    if content.get("format") != CHECKPOINT_FORMAT or "train_state_dict" not in content:
        raise InputError(f"checkpoint {path}: not a training checkpoint of this `occ train` (format "
                         f"{CHECKPOINT_FORMAT}); use --load-from to start from its weights")
    if content["config"] != config_name:
        raise InputError(f"checkpoint {path}: trained config {content['config']!r}, not {config_name!r}")
    return content, checkpoint_config(content, str(path))


def restore(trainer: Trainer, content: dict) -> TrainState:
    """Load a training checkpoint's content into the trainer and the RNGs; returns where the run stood."""
    trainer.raw_model.load_state_dict(content["train_state_dict"])
    trainer.optimizer.load_state_dict(content["optimizer"])
    # The schedule's length stays this run's (mmcv reads max_iters at run time): a resume that
    # extends --max-iters anneals over the new length.
    total_iters = trainer.scheduler.lr_lambdas[0].total_iters
    trainer.scheduler.load_state_dict(content["scheduler"])
    trainer.scheduler.lr_lambdas[0].total_iters = total_iters
    trainer.scaler.load_state_dict(content["scaler"])
    if trainer.ema and content["ema"]:
        trainer.ema.load_state_dict(content["ema"])
    set_rng_state(content["rng"])
    return TrainState(content["step"], content["epoch"], content["batch"], content["history"] or [])


def total_iterations(options: TrainOptions, recipe: TrainRecipe, iters_per_epoch: int) -> int:
    if options.max_iters is not None:
        return options.max_iters
    return (options.max_epochs or recipe.max_epochs) * iters_per_epoch


def train(options: TrainOptions) -> Path:
    """Run (or resume) a training; returns the final checkpoint's path."""
    env = init_distributed()
    try:
        final = _train(options, env)
        if dist.is_initialized():
            # Rank 0 may still be writing the last checkpoint: a rank that tore gloo down meanwhile
            # aborted ("terminate called without an active exception") in 1 of 6 loaded test runs.
            dist.barrier()
        return final
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(options: TrainOptions, env: Distributed) -> Path:
    resumed = None
    if options.resume:
        resume_from = latest_checkpoint(options.work_dir)
        if resume_from is None:
            raise InputError(f"{options.work_dir}: no checkpoint (iter_*.pt) to resume from")
        resumed = read_training_checkpoint(resume_from, options.config)
    config = model_config(options, resumed[1] if resumed else None)
    recipe = config.recipe
    plan = batch_plan(options, recipe, env.world_size)
    dataset = OccupancyDataset(options.data_root, "train", config.input_size, recipe.augment, options.seed,
                               depth=config.depth_loss_weight > 0, history_frames=config.history_frames,
                               rays=recipe.rays if recipe.pixel_labels else None)
    loader, sampler, skipping = build_loader(dataset, plan.batch_size, options, env)
    iters_per_epoch = len(sampler) // (plan.batch_size * plan.accumulation)
    if iters_per_epoch == 0:
        raise InputError(f"{options.data_root}: {len(dataset)} training samples make no global batch of "
                         f"{plan.global_batch} ({env.world_size} process(es) x batch {plan.batch_size} x "
                         f"{plan.accumulation} accumulated)")
    max_iters = total_iterations(options, recipe, iters_per_epoch)

    seed_everything(options.seed)  # same initial weights on every rank
    # A resumed run's weights come from its checkpoint: nothing else is loaded first.
    fresh = replace(options, pretrained=None, load_from=None) if resumed else options
    raw_model, weight_report = initial_model(config, fresh)
    trainer = build_trainer(options, config, env, max_iters, raw_model)
    state = TrainState(history=[])
    options.work_dir.mkdir(parents=True, exist_ok=True)
    if resumed:
        state = restore(trainer, resumed[0])

    logger = RunLogger(options.work_dir, env.is_main, state.step, max_iters, options.progress)
    logger.text(f"config {config.name}, {len(dataset)} samples, global batch {plan.global_batch} = "
                f"{env.world_size} process(es) x batch {plan.batch_size} x {plan.accumulation} accumulated, "
                f"lr {trainer.optimizer.defaults['lr']:.3g}, {iters_per_epoch} iterations per epoch, "
                f"{max_iters} iterations, device {env.device}, "
                f"precision {trainer.autocast_dtype or torch.float32}")
    for lines in weight_report:
        logger.text(lines)
    logger.text(f"supervision {recipe.supervision}" + (
        f": {recipe.rays.describe()} from {label_source(dataset.samples)}" if recipe.pixel_labels else ""))
    trainer.model.train()
    final = checkpoint_path(options.work_dir, state.step)
    interval_losses: list[dict[str, Tensor]] = []
    while state.step < max_iters:
        sampler.set_epoch(state.epoch)
        dataset.set_epoch(state.epoch)
        skipping.skip = state.batch * plan.batch_size * plan.accumulation
        started = time.perf_counter()
        # Each step takes `accumulation` batches; a remainder too short for a step ends the epoch.
        steps = zip(*[iter(loader)] * plan.accumulation, strict=False)
        for batches in itertools.islice(steps, iters_per_epoch - state.batch):
            interval_losses.append(train_step(trainer, list(batches)))
            state.step += 1
            state.batch += 1
            if state.batch == iters_per_epoch:
                state.epoch, state.batch = state.epoch + 1, 0
            logger.tick()
            if state.step % options.log_interval == 0 or state.step == max_iters:
                means = {name: mean_across_ranks(torch.stack([s[name] for s in interval_losses]).mean(), env)
                         for name in interval_losses[-1]}
                lr = trainer.optimizer.param_groups[0]["lr"]
                seconds = (time.perf_counter() - started) / len(interval_losses)
                state.history.append((state.step, means["loss"], lr))
                logger.scalars(state.step, means, lr, seconds, state.epoch)
                interval_losses, started = [], time.perf_counter()
            if state.step % options.checkpoint_interval == 0 or state.step == max_iters:
                final = checkpoint_path(options.work_dir, state.step)
                if env.is_main:
                    save_atomic(checkpoint_content(trainer, state, options, config), final)
                    logger.text(f"saved {final}")
            if state.step == max_iters:
                break
    logger.close(state.history)
    return final


def mean_across_ranks(value: Tensor, env: Distributed) -> float:
    if env.world_size > 1:
        value = value.clone().to(env.device)
        dist.all_reduce(value)
        value /= env.world_size
    return float(value)


class RunLogger:
    """Rank 0's outputs: a plain text log, TensorBoard scalars, a tqdm bar and the loss curve PNG."""

    def __init__(self, work_dir: Path, enabled: bool, step: int, max_iters: int, progress: bool) -> None:
        self.work_dir = work_dir
        self.enabled = enabled
        self.bar = self.writer = self.log_file = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.log_file = open(work_dir / "train.log", "a")  # noqa: SIM115 (open for the whole run)
        self.writer = SummaryWriter(str(work_dir / "tensorboard"))
        self.bar = tqdm(total=max_iters, initial=step, desc="occ train", unit="it", disable=not progress)

    def text(self, message: str) -> None:
        if self.enabled:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
            self.log_file.write(line + "\n")
            self.log_file.flush()
            log.info(message)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def scalars(self, step: int, losses: dict[str, float], lr: float, seconds_per_iter: float, epoch: int,
                ) -> None:
        """`losses` holds `loss` (the total) and its parts (`loss_occ`, `loss_depth`)."""
        if not self.enabled:
            return
        for name, value in losses.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/seconds_per_iter", seconds_per_iter, step)
        self.bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}")
        parts = " ".join(f"{name} {value:.5f}" for name, value in losses.items() if name != "loss")
        self.text(f"step {step} epoch {epoch} loss {losses['loss']:.5f} ({parts}) lr {lr:.3e} "
                  f"{seconds_per_iter:.3f} s/it")

    def close(self, history: list[tuple[int, float, float]]) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.writer.close()
        if history:
            plot_curve(history, self.work_dir / "training_curve.png")
        self.log_file.close()


def plot_curve(history: list[tuple[int, float, float]], path: Path) -> None:
    """Loss and learning rate against iterations, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, lrs = zip(*history, strict=True)
    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    loss_axis.plot(steps, losses)
    loss_axis.set_ylabel("loss")
    loss_axis.grid(alpha=0.3)
    lr_axis.plot(steps, lrs)
    lr_axis.set_ylabel("learning rate")
    lr_axis.set_xlabel("iteration")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
