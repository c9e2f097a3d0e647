"""Checkpoints: reading reference (mmcv) and our own files, and loading them into our models.

Accepted layouts: mmcv's `{"state_dict": ..., "meta": ..., "optimizer": ...}` (meta and optimizer
are ignored), ours (`{"format": 2, "config": name, "model_config": values, "state_dict": ...}`), or a
bare state dict. A leading `module.` (DistributedDataParallel) is stripped from every key.

Ours rebuild their own model from the stored config values, so a config edited after a training still
loads the checkpoints trained before the edit (or fails saying which field this code cannot build);
reference checkpoints and ours of format 1 name no values and are built from a named config. Loading is
strict by default; `load_state_dict_partial` is mmcv's non-strict `load_from` (a detection checkpoint's
backbone, neck and view transformer under a fresh occupancy head).
"""

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from occupancy.errors import InputError
from training.models.configs import (
    CONFIGS,
    ModelConfig,
    build_model,
    config_differences,
    config_from_dict,
    config_to_dict,
    get_config,
)
from training.models.occupancy_model import OccupancyModel

CHECKPOINT_FORMAT = 2  # 2: the config's values under `model_config`; 1: its name only
DDP_PREFIX = "module."
log = logging.getLogger("occ.checkpoint")


def read_checkpoint(path: str | Path, trusted: bool = False) -> dict:
    """The checkpoint file's top-level dict.

    Reads with `weights_only=True` (tensors and plain Python containers only). A checkpoint whose
    `meta` holds other Python objects is refused unless `trusted`: unpickling it runs code from it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path}: no such file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch says "can still be loaded" only when the pickle is sound but holds other objects.
        if "can still be loaded" not in str(error).lower():
            raise InputError(f"checkpoint {path}: not a PyTorch checkpoint ({_first_line(error)})") from None
        if not trusted:
            raise InputError(
                f"checkpoint {path}: holds Python objects besides tensors; load it as trusted only if "
                "you trust its source (unpickling them can run code)"
            ) from None
        content = _load_untrusted(path)
    except Exception as error:  # torch.load raises many types on a file that is not a checkpoint
        raise InputError(f"checkpoint {path}: not a PyTorch checkpoint ({_first_line(error)})") from None
    if not isinstance(content, Mapping):
        raise InputError(f"checkpoint {path}: expected a dict, found {type(content).__name__}")
    return dict(content)


def _load_untrusted(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # any unpickling failure means the file is unusable
        raise InputError(f"checkpoint {path}: not a PyTorch checkpoint ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def extract_state_dict(checkpoint: Mapping, source: str = "checkpoint") -> dict[str, Tensor]:
    """The model weights of a checkpoint dict, with any DDP `module.` prefix removed."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        keys = ", ".join(map(str, checkpoint))
        raise InputError(f"{source}: no state_dict of tensors (top-level keys: {keys})")
    return {key.removeprefix(DDP_PREFIX): value for key, value in state.items()}


def state_dict_mismatches(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, list[str]]:
    """Missing, unexpected and mis-shaped keys of `state` against the model's state dict."""
    expected = model.state_dict()
    return {
        "missing": sorted(expected.keys() - state.keys()),
        "unexpected": sorted(state.keys() - expected.keys()),
        "wrong shape": [
            f"{key} (checkpoint {list(state[key].shape)}, model {list(expected[key].shape)})"
            for key in sorted(expected.keys() & state.keys())
            if state[key].shape != expected[key].shape
        ],
    }


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Copies `state` into the model; any key or shape mismatch is one InputError listing them all."""
    mismatches = {group: keys for group, keys in state_dict_mismatches(model, state).items() if keys}
    if mismatches:
        lines = [f"{source} does not match the model:"]
        for group, keys in mismatches.items():
            lines.append(f"  {group} ({len(keys)}): " + ", ".join(keys))
        raise InputError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path, trusted: bool = False) -> dict:
    """Loads a reference or own checkpoint into `model` strictly; returns the file's top-level dict."""
    checkpoint = read_checkpoint(path, trusted)
    load_state_dict_strict(model, extract_state_dict(checkpoint, f"checkpoint {path}"), f"checkpoint {path}")
    return checkpoint


@dataclass(frozen=True)
class PartialLoad:
    """What `load_state_dict_partial` copied and what it left as initialised."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]  # in the model, not in the checkpoint
    unexpected: tuple[str, ...]  # in the checkpoint, not in the model
    wrong_shape: tuple[str, ...]  # in both, with another shape ("key (checkpoint [..], model [..])")

    def table(self) -> str:
        """mmcv's report of a non-strict load: one line per group, with its keys."""
        groups = (("loaded", self.loaded), ("missing in checkpoint (left as initialised)", self.missing),
                  ("unexpected in checkpoint (ignored)", self.unexpected),
                  ("shape mismatch (left as initialised)", self.wrong_shape))
        return "\n".join(f"{name} ({len(keys)}): {', '.join(keys) if keys else '-'}" for name, keys in groups)


def load_state_dict_partial(model: nn.Module, state: Mapping[str, Tensor]) -> PartialLoad:
    """Copies every key of `state` whose name and shape match the model's; the rest stays as it was."""
    mismatches = state_dict_mismatches(model, state)
    expected = model.state_dict()
    matching = {key: value for key, value in state.items() if key in expected
                and value.shape == expected[key].shape}
    model.load_state_dict(matching, strict=False)
    return PartialLoad(tuple(sorted(matching)), *(tuple(mismatches[group]) for group in
                                                   ("missing", "unexpected", "wrong shape")))


def save_checkpoint(path: str | Path, model: nn.Module, config: ModelConfig, **extra: object) -> None:
    """Writes our layout (config name and values, weights, `extra`) so that `load_model` rebuilds it."""
    torch.save({"format": CHECKPOINT_FORMAT, "config": config.name, "model_config": config_to_dict(config),
                "state_dict": model.state_dict(), **extra}, Path(path))


def checkpoint_config(checkpoint: Mapping, source: str, config_name: str | None = None) -> ModelConfig:
    """The config a checkpoint was trained with: its stored values where it has them (ours), else the
    named config (reference checkpoints, ours of format 1). `config_name`, when given, must agree with
    the name a checkpoint stores."""
    stored_name = checkpoint.get("config")
    if stored_name is not None and config_name is not None and stored_name != config_name:
        raise InputError(f"{source}: holds config {stored_name!r}, not {config_name!r}")
    name = config_name or stored_name
    if "model_config" not in checkpoint:
        if name is None:
            raise InputError(f"{source}: names no model config; give one (e.g. flashocc-r50-256x704)")
        return get_config(name)
    config = config_from_dict(checkpoint["model_config"], f"{source}: config {name!r}")
    if name in CONFIGS:
        changed = config_differences(config, get_config(name))
        if changed:
            log.warning("%s: built with its own stored %s config, which differs from this code's in %s",
                        source, name, ", ".join(changed))
    return config


def load_model(path: str | Path, config_name: str | None = None, trusted: bool = False,
               ) -> tuple[OccupancyModel, ModelConfig]:
    """Builds the checkpoint's model and loads its weights strictly; (model in eval mode, its config).

    `config_name` is needed for reference checkpoints, which do not name our config; when both are
    given they must agree.
    """
    checkpoint = read_checkpoint(path, trusted)
    source = f"checkpoint {path}"
    config = checkpoint_config(checkpoint, source, config_name)
    model = build_model(config)
    load_state_dict_strict(model, extract_state_dict(checkpoint, source), source)
    return model.eval(), config
