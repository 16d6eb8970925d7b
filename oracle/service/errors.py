"""The one table from domain errors to HTTP status codes, and the handlers that apply it."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from oracle.core.errors import (
    Conflict,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    OracleError,
    StorageUnavailable,
)
from oracle.service.auth import Forbidden, Unauthorized
from oracle.service.bodies import UnsupportedMediaType

log = structlog.get_logger()

RETRY_AFTER_S = "2"

STATUS: dict[type[OracleError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    ModelUnavailable: 503,
    StorageUnavailable: 503,
}


def status_of(error: OracleError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


async def _oracle_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, OracleError)
    status = status_of(error)
    headers: dict[str, str] = {}
    if status == 503:
        headers["Retry-After"] = RETRY_AFTER_S
        log.warning("unavailable", error=str(error), path=request.url.path)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)


def _readable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [str(part) for part in e.get("loc", ())]
        field = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
        msg = e.get("msg", "")
        if e.get("type") == "json_invalid" and e.get("ctx", {}).get("error"):
            msg = f"{msg}: {e['ctx']['error']}"
        out.append({"loc": e.get("loc"), "field": field, "msg": msg, "type": e.get("type")})
    return out


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": _readable(list(error.errors()))}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(OracleError, _oracle_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
