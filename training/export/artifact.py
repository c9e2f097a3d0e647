"""A checkpoint -> a checked export artifact (ONNX, optionally a TensorRT engine, the model card) in a
scratch folder. Publishing (training/publish.py) is the only thing that places an artifact into the model
repository, so `occ export`, `occ publish --checkpoint` and `occ refresh` all end in one writer.

The ONNX Runtime FP32 output must match PyTorch on a frame of the nuScenes-like rig
(training/export/rig.py), for a temporal model on a three-frame drive through it (cold start, second
frame, steady), else no artifact is made.
"""

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from occupancy.errors import InputError
from occupancy.model_contract import ModelMetadata
from occupancy.model_repository import ONNX_FILE, PLAN_FILE, WARMUP_DIR, Runtime
from training.export.onnx_export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    check_parity,
    check_sequence_parity,
    export_onnx,
    sample_inputs,
    sequence_inputs,
)
from training.export.triton_config import read_signature, write_warmup_sample
from training.models.checkpoint import load_model
from training.models.configs import ModelConfig, build_model
from training.models.occupancy_model import OccupancyModel
from training.publish import Artifact, cards_beside

DEFAULT_TIMING_CACHE = Path("work/trt-timing.cache")  # outside the repository: GPU- and TensorRT-specific
RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class EngineOptions:
    """How a TensorRT engine is built: its batch range and workspace, and where its timing cache lives."""

    max_batch: int = 4
    workspace_gb: float = 4.0
    timing_cache: Path = DEFAULT_TIMING_CACHE


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


def export_artifact(config: ModelConfig, checkpoint: Path | None, scratch: Path, runtime: Runtime, *,
                    opset: int = DEFAULT_OPSET, engine: EngineOptions = EngineOptions(),
                    log: Callable[[str], None] = print) -> Artifact:
    """Export `config` (weights from `checkpoint`) for `runtime` into the empty folder `scratch`.

    Raises InputError for an unusable checkpoint, a failed parity check or (TensorRT) a machine without
    TensorRT 10 and a GPU.
    """
    if opset < MIN_OPSET:
        raise InputError(f"--opset {opset}: the pooling needs ScatterElements with a reduction (opset >= 16)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError(f"--checkpoint {checkpoint}: no such file")
    if runtime is Runtime.TENSORRT:
        from training.export.tensorrt import require_tensorrt

        require_tensorrt()  # before minutes of export: say at once what this machine lacks
    model, config = build_export_model(config, checkpoint, log)
    onnx_path = scratch / ONNX_FILE
    log(f"exporting {config.name} to ONNX (opset {opset}, TorchScript exporter, BEV pooling for "
        f"{runtime.graph})")
    started = time.perf_counter()
    export_onnx(model, config, onnx_path, opset, runtime)
    log(f"exported in {time.perf_counter() - started:.1f} s, {onnx_path.stat().st_size / 2**20:.1f} MiB")
    parity = _check(model, config, onnx_path, log)
    log(parity.summary())
    if not parity.ok:
        raise InputError(f"{config.name}: the exported graph does not match PyTorch ({parity.summary()}); "
                         "nothing was written")
    # The card travels from beside the checkpoint (where `occ train`/`occ refresh` write it).
    cards = () if checkpoint is None else tuple(
        Path(shutil.copy2(card, scratch / card.name)) for card in cards_beside(checkpoint))
    if runtime is not Runtime.TENSORRT:
        return Artifact(onnx_path, cards=cards)
    plan, warmup = _build_engine(config, onnx_path, scratch, engine, log)
    return Artifact(onnx_path, plan, warmup, cards)


def _check(model, config: ModelConfig, onnx_path: Path, log: Callable[[str], None]):
    """The parity of the exported graph: on a frame, or for a temporal model on a streamed sequence."""
    if not config.temporal:
        log("checking ONNX Runtime FP32 against PyTorch on a frame of the nuScenes-like rig")
        return check_parity(model, onnx_path, sample_inputs(config))
    log("checking ONNX Runtime FP32 against PyTorch's streamed forward (equal to the offline three-frame "
        "one) on a three-frame drive of the nuScenes-like rig")
    state = _metadata(onnx_path).state
    return check_sequence_parity(model, onnx_path, sequence_inputs(config, state))


def _metadata(onnx_path: Path) -> ModelMetadata:
    return ModelMetadata.from_props(read_signature(onnx_path).metadata, str(onnx_path))


def _build_engine(config: ModelConfig, onnx_path: Path, scratch: Path, engine: EngineOptions,
                  log: Callable[[str], None]) -> tuple[Path, Path]:
    """model.plan (FP16, batch 1..max_batch) and the warm-up frame folder, built from `onnx_path`."""
    from training.export.tensorrt import build_engine

    log(f"building the TensorRT FP16 engine (batch 1..{engine.max_batch}, workspace "
        f"{engine.workspace_gb} GB)")
    build = build_engine(onnx_path, scratch / PLAN_FILE, max_batch=engine.max_batch,
                         workspace_gb=engine.workspace_gb, timing_cache=engine.timing_cache)
    log(f"engine built in {build.seconds:.1f} s with TensorRT {build.tensorrt_version}")
    if config.temporal:
        inputs = sequence_inputs(config, _metadata(onnx_path).state, 1)[0]
    else:
        inputs = sample_inputs(config)
    frame = {key: value[0] for key, value in inputs.items()}
    write_warmup_sample(scratch / WARMUP_DIR, read_signature(onnx_path), frame)
    return build.plan_path, scratch / WARMUP_DIR
