"""DELETE /v1/sequences/{sequence_id}: end a temporal sequence, its kept states dropped."""

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from service.api.deps import StateDep
from service.api.schemas import Detail
from service.core.errors import ErrorKind, GatewayError

router = APIRouter(tags=["sequences"])


@router.delete("/v1/sequences/{sequence_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, responses={404: {"model": Detail}})
async def end_sequence(state: StateDep, sequence_id: Annotated[str, Path(max_length=128)]) -> Response:
    """Forget a sequence (of every temporal model): its next frame is a cold start. 404 if none is held."""
    if not state.sequences.forget(sequence_id):
        raise GatewayError(ErrorKind.NOT_FOUND, f"sequence: {sequence_id[:64]!r} is not held here")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
