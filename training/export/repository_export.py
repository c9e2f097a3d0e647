"""A checkpoint -> a new, checked version in the Triton model repository (what `occ export` does).

Everything is built in a staging folder inside the model's folder (`<repository>/<name>/.export-*`:
Triton and the gateway ignore folders whose names are not numbers), checked there, and only then
renamed into place, so a watcher never sees a half-written or failing version.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from occupancy.errors import InputError
from training.export.onnx_export import DEFAULT_OPSET, MIN_OPSET, check_parity, export_onnx, sample_inputs
from training.export.triton_config import (
    CONFIG_FILE,
    ONNX_FILE,
    WARMUP_DIR,
    onnxruntime_config,
    read_signature,
    write_config,
)
from training.models.checkpoint import load_model
from training.models.configs import ModelConfig, build_model, get_config
from training.models.occupancy_model import OccupancyModel

FORMATS = ("onnx", "tensorrt")
CARD_FILES = ("model_card.md", "card.json")  # copied from beside the checkpoint into the version
DEFAULT_TIMING_CACHE = Path("work/trt-timing.cache")  # outside the repository: GPU- and TensorRT-specific
RANDOM_INIT_SEED = 0


def next_version(model_dir: Path) -> int:
    """One above the highest numbered version folder of `model_dir` (1 for a new model)."""
    numbers = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(numbers, default=0) + 1


def build_export_model(config: ModelConfig, checkpoint: Path | None,
                       log: Callable[[str], None]) -> tuple[OccupancyModel, ModelConfig]:
    """The model to export in eval mode and its config: the checkpoint's own (its weights and stored
    config values), or `config` with seeded random weights without one."""
    if checkpoint is not None:
        log(f"loading {checkpoint}")
        return load_model(checkpoint, config.name)
    log(f"no checkpoint: exporting randomly initialised weights (seed {RANDOM_INIT_SEED})")
    torch.manual_seed(RANDOM_INIT_SEED)
    return build_model(config).eval(), config


@dataclass(frozen=True)
class ServingOptions:
    """How the version is served: the Triton config's batch limit and, for TensorRT, the engine build."""

    export_format: str = "onnx"  # one of FORMATS
    max_batch: int = 4
    workspace_gb: float = 4.0
    timing_cache: Path = DEFAULT_TIMING_CACHE


def export_to_repository(
    config_name: str,
    checkpoint: Path | None,
    repository: Path,
    name: str | None = None,
    version: int | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    export_format: str = "onnx",
    max_batch: int = 4,
    workspace_gb: float = 4.0,
    timing_cache: Path = DEFAULT_TIMING_CACHE,
    log: Callable[[str], None] = print,
) -> Path:
    """Export `config_name` (weights from `checkpoint`) as `repository/<name>/<version>/model.onnx` and
    write `repository/<name>/config.pbtxt`; returns the version folder.

    `name` defaults to the config name, `version` to the next free one. The ONNX Runtime FP32 output
    must match PyTorch on a frame of the nuScenes-like rig (training/export/rig.py), else nothing is
    written. `export_format="tensorrt"` also builds `model.plan` (FP16) and writes a tensorrt_plan
    config. Raises InputError for an unknown config, an unusable checkpoint, an existing version, a
    failed parity check or (TensorRT) a machine without TensorRT 10 and a GPU; nothing is written then.
    """
    config = get_config(config_name)
    if config.temporal:
        raise InputError(f"{config.name}: a temporal (4D) model takes the frames before as state; exporting "
                         "those is not built yet")
    serving = ServingOptions(export_format, max_batch, workspace_gb, Path(timing_cache))
    if export_format not in FORMATS:
        raise InputError(f"--format {export_format!r}: expected one of {', '.join(FORMATS)}")
    if opset < MIN_OPSET:
        raise InputError(f"--opset {opset}: the pooling needs ScatterElements with a reduction (opset >= 16)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"--checkpoint {checkpoint}: no such file")
    model_dir = Path(repository) / (name or config.name)
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise InputError(f"--version {version}: versions are numbered from 1")
    target = model_dir / str(version)
    if target.exists():
        raise InputError(f"version {target} exists already; choose another --version or leave it out")
    model, config = build_export_model(config, checkpoint, log)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        staged_model = staging / model_dir.name
        _stage(model, config, checkpoint, staged_model, version, opset, serving, log)
        _publish(staged_model, model_dir, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {target}")
    return target


def _stage(model: OccupancyModel, config: ModelConfig, checkpoint: Path | None, staged_model: Path,
           version: int, opset: int, serving: ServingOptions, log: Callable[[str], None]) -> None:
    """Write and check `staged_model/<version>/` and `staged_model/config.pbtxt`."""
    onnx_path = staged_model / str(version) / ONNX_FILE
    # The TensorRT engine is built from this same file, so it gets the pooling TensorRT imports.
    target = "tensorrt" if serving.export_format == "tensorrt" else "onnxruntime"
    log(f"exporting {config.name} to ONNX (opset {opset}, TorchScript exporter, BEV pooling for {target})")
    started = time.perf_counter()
    export_onnx(model, config, onnx_path, opset, target)
    log(f"exported in {time.perf_counter() - started:.1f} s, {onnx_path.stat().st_size / 2**20:.1f} MiB")
    log("checking ONNX Runtime FP32 against PyTorch on a frame of the nuScenes-like rig")
    parity = check_parity(model, onnx_path, sample_inputs(config))
    log(parity.summary())
    if not parity.ok:
        raise InputError(f"{config.name}: the exported graph does not match PyTorch "
                         f"({parity.summary()}); nothing was written")
    _copy_cards(checkpoint, onnx_path.parent)
    if serving.export_format == "tensorrt":
        _stage_tensorrt(config, onnx_path, staged_model, version, serving, log)
    else:
        config_pbtxt = onnxruntime_config(staged_model.name, read_signature(onnx_path), serving.max_batch,
                                          gpu=False)
        write_config(staged_model, config_pbtxt)


def _copy_cards(checkpoint: Path | None, version_dir: Path) -> None:
    for card_name in CARD_FILES if checkpoint is not None else ():
        card = Path(checkpoint).parent / card_name
        if card.is_file():
            shutil.copy2(card, version_dir / card_name)


def _stage_tensorrt(config: ModelConfig, onnx_path: Path, staged_model: Path, version: int,
                    serving: ServingOptions, log: Callable[[str], None]) -> None:
    from training.export.tensorrt import export_tensorrt_model

    log(f"building the TensorRT FP16 engine (batch 1..{serving.max_batch}, "
        f"workspace {serving.workspace_gb} GB)")
    frame = {key: value[0] for key, value in sample_inputs(config).items()}
    try:
        build = export_tensorrt_model(onnx_path, staged_model.parent, staged_model.name, version,
                                      timing_cache=serving.timing_cache, max_batch=serving.max_batch,
                                      workspace_gb=serving.workspace_gb, warmup_sample=frame)
    except InputError as error:
        raise InputError(f"{error}; nothing was written (`--format onnx` exports the ONNX model alone)"
                         ) from None
    log(f"engine built in {build.seconds:.1f} s with TensorRT {build.tensorrt_version}")


def _publish(staged_model: Path, model_dir: Path, version: int) -> None:
    """Move the staged version into place (one rename), then replace config.pbtxt and warm-up files."""
    target = model_dir / str(version)
    if target.exists():  # another export took the number meanwhile
        raise InputError(f"version {target} appeared while exporting; nothing was written")
    os.rename(staged_model / str(version), target)
    staged_warmup = staged_model / WARMUP_DIR
    if staged_warmup.is_dir():
        shutil.rmtree(model_dir / WARMUP_DIR, ignore_errors=True)
        os.rename(staged_warmup, model_dir / WARMUP_DIR)
    os.replace(staged_model / CONFIG_FILE, model_dir / CONFIG_FILE)
