"""GET /v1/models: what this gateway serves."""

from fastapi import APIRouter

from service.api.deps import StateDep
from service.api.schemas import ModelDescription, ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsResponse)
async def list_models(state: StateDep) -> ModelsResponse:
    """The served models, their versions, training configs and input sizes."""
    return ModelsResponse(
        default=state.default_model,
        models=[
            ModelDescription(
                name=model.name, version=model.version, versions=list(model.versions), config=model.config,
                input_size=list(model.input_size), temporal=model.temporal, backend=state.backend.kind,
                default=model.name == state.default_model,
                state_bytes=model.state_bytes if model.temporal else None, frame_gap_s=model.frame_gap_s,
            )
            for model in state.backend.models.values()
        ],
    )
