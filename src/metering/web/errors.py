"""Errors as JSON: one shape for every refusal, and its description in the OpenAPI document.

Every error answers `{"error": {"code": ..., "message": ...}}` (validation errors add `details`);
messages never carry a secret. `responses(...)` documents the statuses a route can answer, with
that shape, so the OpenAPI document lists every status the app sends.
"""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from metering.errors import ConfigurationError, Conflict, MeteringError, PermanentError
from metering.grants.post import InvalidGrant
from metering.ledger.accounts import NotFound
from metering.ledger.reports import InvalidQuery
from metering.ops.logs import get_logger, redact_text
from metering.pricing import PricingError
from metering.stripe import checkout as stripe_checkout
from metering.stripe.webhooks import InvalidWebhook
from metering.web.auth import Unauthorized

log = get_logger(__name__)


class ErrorDetail(BaseModel):
    """Where a validation error is (`loc`: body, query or path, then field names) and why."""

    loc: list[str | int]
    message: str


class Error(BaseModel):
    code: str = Field(description="Stable and machine-readable, e.g. not_found, invalid_request.")
    message: str = Field(description="For people; never carries a secret.")
    details: list[ErrorDetail] | None = Field(
        default=None, description="Validation errors only: one entry per refused field."
    )


class ErrorResponse(BaseModel):
    """Every error the API answers."""

    error: Error


STATUS_DESCRIPTIONS = {
    400: "The body is malformed JSON (`invalid_json`).",
    401: "No valid bearer token (`unauthorized`).",
    404: "No such user or experiment (`not_found`).",
    409: "The request contradicts what is recorded, e.g. a key already used for another posting "
    "(`idempotency_key_conflict`).",
    422: "The request is refused: a parameter or field missing or out of its bounds, a body "
    "that is not a JSON object, an unpriced model (`invalid_request` and pricing codes).",
    503: "The API token is not configured (`api_not_configured`), or the database is unavailable.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error statuses, each with the error shape."""
    return {
        status: {"model": ErrorResponse, "description": STATUS_DESCRIPTIONS[status]}
        for status in statuses
    }


def install(app: FastAPI) -> None:
    """Route every error the app can raise through the one JSON shape, and document it so."""
    app.add_exception_handler(MeteringError, _metering_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for unreachable in (OperationalError, InterfaceError, OSError):
        app.add_exception_handler(unreachable, _database_unavailable)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_error_shape(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_error_shape(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents its own 422 body (`{"detail": [...]}`) on routes that take input and
    that do not declare their 422: give those the error shape the handler really answers."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            unprocessable = operation.get("responses", {}).get("422")
            if unprocessable is not None:
                unprocessable["content"] = {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                }
    schemas = document.get("components", {}).get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return document


def status_of(error: MeteringError) -> int:
    if isinstance(error, Unauthorized):
        return 401
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, InvalidWebhook):
        return 400
    if isinstance(error, stripe_checkout.InvalidPurchase | stripe_checkout.UnknownPack):
        return 422
    if isinstance(error, InvalidQuery | PricingError | InvalidGrant):
        return 422
    if isinstance(error, Conflict):
        return 409
    if isinstance(error, stripe_checkout.StripeRequestFailed):
        return 503 if error.unavailable else 502
    if isinstance(error, ConfigurationError):
        return 503
    if isinstance(error, PermanentError):
        return 400
    return 503


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": redact_text(message), **extra}}


async def _metering_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, MeteringError)
    status = status_of(error)
    log.info("request refused", path=request.url.path, status=status, code=error.code)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(error.code, error.message), status, headers=headers)


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """PostgreSQL out of reach, or its connection lost mid-request: 503, as documented."""
    log.warning("database unavailable", path=request.url.path, error=str(error))
    message = "the database is unavailable; try again later"
    return JSONResponse(error_body("database_unavailable", message), 503)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    """422 with one detail per refused field; 400 when the body is not JSON at all."""
    assert isinstance(error, RequestValidationError)
    items = error.errors()
    if any(item.get("type") == "json_invalid" for item in items):
        return JSONResponse(error_body("invalid_json", "the body is not valid JSON"), 400)
    details = [
        {"loc": [_location(part) for part in item.get("loc", ())], "message": item.get("msg", "")}
        for item in items
    ]
    message = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['message']}" for d in details)
    return JSONResponse(error_body("invalid_request", message, details=details), 422)


def _location(part: Any) -> str | int:
    return part if isinstance(part, int) and not isinstance(part, bool) else str(part)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    """Routing errors (no such route, a method the route does not take) in the same shape."""
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(error.detail)), error.status_code, headers=error.headers
    )
