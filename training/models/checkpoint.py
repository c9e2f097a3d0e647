"""Checkpoints: reading reference (mmcv) and our own files, and strict loading into our models.

Accepted layouts: mmcv's `{"state_dict": ..., "meta": ..., "optimizer": ...}` (meta and optimizer
are ignored), ours (`{"config": name, "state_dict": ...}`), or a bare state dict. A leading
`module.` (DistributedDataParallel) is stripped from every key.
"""

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from occupancy.errors import InputError
from training.models.configs import build_model, get_config
from training.models.occupancy_model import OccupancyModel

DDP_PREFIX = "module."


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


def save_checkpoint(path: str | Path, model: nn.Module, config_name: str, **extra: object) -> None:
    """Writes `{"config": config_name, "state_dict": ..., **extra}` so that `load_model` rebuilds it."""
    torch.save({"config": config_name, "state_dict": model.state_dict(), **extra}, Path(path))


def load_model(path: str | Path, config_name: str | None = None, trusted: bool = False) -> OccupancyModel:
    """Builds the checkpoint's model and loads its weights (eval mode).

    `config_name` is needed for reference checkpoints, which do not name our config; when both are
    given they must agree.
    """
    checkpoint = read_checkpoint(path, trusted)
    stored = checkpoint.get("config")
    if stored is not None and config_name is not None and stored != config_name:
        raise InputError(f"checkpoint {path}: holds config {stored!r}, not {config_name!r}")
    name = config_name or stored
    if name is None:
        raise InputError(f"checkpoint {path}: names no model config; give one (e.g. flashocc-r50-256x704)")
    model = build_model(get_config(name))
    load_state_dict_strict(model, extract_state_dict(checkpoint, f"checkpoint {path}"), f"checkpoint {path}")
    return model.eval()
