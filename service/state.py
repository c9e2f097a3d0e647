"""What the app builds in its lifespan and every request uses (stored on `app.state.occ`)."""

from concurrent.futures import Executor
from dataclasses import dataclass

from service.backends.base import Backend, ServedModel
from service.core.admission import Admission, UploadLimit
from service.core.config import Settings
from service.core.errors import ErrorKind, GatewayError
from service.core.metrics import Metrics
from service.core.sequences import SequenceStore


@dataclass(frozen=True)
class AppState:
    settings: Settings
    backend: Backend
    metrics: Metrics
    admission: Admission
    uploads: UploadLimit
    decoder: Executor  # decodes a frame's images in parallel (service.pipeline)
    default_model: str
    sequences: SequenceStore  # temporal models' sequences

    def model(self, name: str | None) -> ServedModel:
        """The served model called `name` (the default for None), at the version served now: the request
        keeps it to the end. GatewayError NOT_FOUND naming the served ones otherwise."""
        models = self.backend.models
        name = self.default_model if name is None else name
        if name not in models:
            raise GatewayError(ErrorKind.NOT_FOUND, f"model: unknown {name[:64]!r}, served: {sorted(models)}")
        return models[name]
