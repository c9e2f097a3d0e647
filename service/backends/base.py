"""The backend interface the gateway calls, and the served-model description read from ONNX metadata."""

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from occupancy import model_contract as contract
from occupancy.errors import InputError
from service.core.errors import ErrorKind, GatewayError


@dataclass(frozen=True)
class ServedModel:
    """One served model version, as its ONNX metadata_props describe it."""

    name: str
    version: str
    versions: tuple[str, ...]  # all versions in the repository, oldest first
    config: str  # training config name, e.g. "flashocc-r50-256x704"
    input_size: tuple[int, int]  # (H, W) of the `images` input
    grid_shape: tuple[int, int, int]
    range_m: tuple[float, ...]  # x_min, y_min, z_min, x_max, y_max, z_max
    voxel_size_m: tuple[float, float, float]
    classes: tuple[str, ...]
    temporal: bool

    @property
    def free_class(self) -> int:
        return self.classes.index("free")


def served_model_from_metadata(
    name: str, version: str, versions: tuple[str, ...], metadata: Mapping[str, str], source: str
) -> ServedModel:
    """Parse the JSON metadata_props the exporter writes; InputError naming `source` if any is unusable."""
    try:
        values = {key: json.loads(metadata[key]) for key in (
            contract.META_CONFIG, contract.META_INPUT_SIZE, contract.META_GRID,
            contract.META_CLASSES, contract.META_TEMPORAL)}
        grid = values[contract.META_GRID]
        height, width = values[contract.META_INPUT_SIZE]
        voxel = grid["voxel_size_m"]
        model = ServedModel(
            name=name,
            version=version,
            versions=versions,
            config=str(values[contract.META_CONFIG]),
            input_size=(int(height), int(width)),
            grid_shape=tuple(int(n) for n in grid["shape"]),
            range_m=tuple(float(v) for v in grid["range_m"]),
            voxel_size_m=tuple(float(v) for v in (voxel if isinstance(voxel, list) else [voxel] * 3)),
            classes=tuple(str(c) for c in values[contract.META_CLASSES]),
            temporal=bool(values[contract.META_TEMPORAL]),
        )
        if "free" not in model.classes:
            raise ValueError("the class table has no 'free' class")
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{source}: unusable occ.* metadata ({error!r}); re-export the model") from error
    return model


@dataclass(frozen=True)
class Inference:
    """One batch's answer and the model version that computed it (it may change between requests)."""

    semantics: np.ndarray  # uint8 [B, X, Y, Z]
    model: ServedModel


class BackendUnavailable(GatewayError):
    """The backend cannot answer now (e.g. Triton is down or restarting): the request may be retried.
    `reason` goes to the log only: it may name internal addresses."""

    def __init__(self, reason: str):
        super().__init__(ErrorKind.UNAVAILABLE, "backend: unavailable now, retry later", reason)


class BackendTimeout(GatewayError, TimeoutError):
    """The backend did not answer within its own deadline."""

    def __init__(self, detail: str):
        super().__init__(ErrorKind.TIMEOUT, detail)


class Backend(ABC):
    """Runs served models on already preprocessed tensors (the names of `occupancy.model_contract`)."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def models(self) -> Mapping[str, ServedModel]:
        """The served models by name, each at the version served now (it follows new versions)."""

    @abstractmethod
    async def infer(self, model: ServedModel, inputs: Mapping[str, np.ndarray]) -> Inference:
        """`semantics` of one batch and the version that answered; must not block the event loop.

        `model` is what the request resolved (from `models`) and made its inputs for: a version swapped
        in since must not run them with another input size. Raises BackendUnavailable when the backend
        cannot answer now, BackendTimeout when it did not in time.
        """

    @abstractmethod
    async def ready(self) -> bool:
        """Whether a model is loaded and the backend answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release sessions, threads and connections."""
