"""The backend interface the gateway calls, and the served-model description read from ONNX metadata."""

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from occupancy.model_contract import ModelMetadata


@dataclass(frozen=True)
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


class BackendUnavailable(Exception):
    """The backend cannot answer now (e.g. Triton is down or restarting): the request may be retried."""


class Backend(ABC):
    """Runs served models on already preprocessed tensors (the names of `occupancy.model_contract`)."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def models(self) -> Mapping[str, ServedModel]:
        """The served models by name, each at the version served now (it follows new versions)."""

    @abstractmethod
    async def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> Inference:
        """`semantics` of one batch and the version that answered; must not block the event loop.

        Raises BackendUnavailable when the backend cannot answer now, TimeoutError when it did not in time.
        """

    @abstractmethod
    async def ready(self) -> bool:
        """Whether a model is loaded and the backend answers."""

    @abstractmethod
    async def close(self) -> None:
        """Release sessions, threads and connections."""
