"""What the app builds in its lifespan and every request uses (stored on `app.state.occ`)."""

from dataclasses import dataclass

from fastapi import HTTPException, status

from service.backends.base import Backend, ServedModel
from service.core.admission import Admission
from service.core.config import Settings
from service.core.metrics import Metrics


@dataclass(frozen=True)
class AppState:
    settings: Settings
    backend: Backend
    metrics: Metrics
    admission: Admission
    default_model: str

    def model(self, name: str | None) -> ServedModel:
        """The served model called `name` (the default for None); 404 naming the served ones otherwise."""
        models = self.backend.models
        name = self.default_model if name is None else name
        if name not in models:
            message = f"model: unknown {name!r}, served: {sorted(models)}"
            raise HTTPException(status.HTTP_404_NOT_FOUND, message)
        return models[name]
