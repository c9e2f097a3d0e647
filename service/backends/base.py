"""The backend interface the gateway calls, and the served-model description read from ONNX metadata."""

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from occupancy.model_contract import ModelMetadata
from service.core.errors import ErrorKind, GatewayError


@dataclass(frozen=True, kw_only=True)
class ServedModel(ModelMetadata):
    """One served model version: what its metadata says, and where it stands in the repository."""

    name: str
    version: str
    versions: tuple[str, ...]  # all versions in the repository, oldest first

    @classmethod
    def described(cls, name: str, version: str, versions: tuple[str, ...], props: Mapping[str, str],
                  source: str) -> "ServedModel":
        """The served model whose metadata_props are `props`; InputError naming `source` if unusable."""
        metadata = ModelMetadata.from_props(props, source)
        described = {f.name: getattr(metadata, f.name) for f in fields(metadata)}
        return cls(**described, name=name, version=version, versions=versions)


@dataclass(frozen=True)
class Inference:
    """One batch's answer and the model version that computed it (it may change between requests)."""

    semantics: np.ndarray  # uint8 [B, X, Y, Z]
    model: ServedModel
    # Temporal models: the state the frame leaves, by the state input the next frame reads it from.
    state: Mapping[str, np.ndarray] = field(default_factory=dict)


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
        """`semantics` of one batch (and a temporal model's state) and the version that answered; must not
        block the event loop. `inputs` holds `model.input_names`.

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
