"""Bearer-token authentication of the API (`METERING_API_TOKEN`)."""

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from metering.errors import ConfigurationError, PermanentError
from metering.web.deps import State

bearer = HTTPBearer(auto_error=False, description="METERING_API_TOKEN")


class Unauthorized(PermanentError):
    code = "unauthorized"


async def require_api_token(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Refuse a request without the configured bearer token (compared in constant time)."""
    expected = state.settings.metering_api_token.get_secret_value()
    if not expected:
        raise ConfigurationError("METERING_API_TOKEN is not set", code="api_not_configured")
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("a valid bearer token is required")
