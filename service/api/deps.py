"""Typed dependencies: what a handler needs, visible in its signature."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.state import AppState

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>, where keys are configured")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="alternative to Bearer")


def get_state(request: Request) -> AppState:
    return request.app.state.occ


StateDep = Annotated[AppState, Depends(get_state)]


async def require_api_key(
    state: StateDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """401 unless no keys are configured or the request carries one of them (Bearer or X-API-Key)."""
    keys = state.settings.api_keys
    if not keys:
        return
    given = (bearer.credentials if bearer is not None else api_key) or ""
    # Compare against every key, each in constant time, so timing reveals neither a key nor which matched.
    matches = [hmac.compare_digest(given.encode(), key.get_secret_value().encode()) for key in keys]
    if not given or not any(matches):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authorization: missing API key" if not given else "authorization: wrong API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
