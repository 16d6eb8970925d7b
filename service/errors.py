"""The one table from domain errors to HTTP status codes, the handlers that apply it, and the
OpenAPI description of those refusals on every operation that can answer them."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from core.errors import (
    Conflict,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    OracleError,
    StorageUnavailable,
)
from service.auth import Forbidden, Unauthorized
from service.bodies import UnsupportedMediaType

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
        event = "storage_unavailable" if isinstance(error, StorageUnavailable) else "unavailable"
        log.warning(event, error=str(error), path=request.url.path)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)


def _readable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [str(part) for part in e.get("loc", ())]
        field = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
        if not field and loc:
            field = loc[0]  # the body as a whole: empty, or not a JSON object
        msg = e.get("msg", "")
        if e.get("type") == "json_invalid" and e.get("ctx", {}).get("error"):
            msg = f"{msg}: {e['ctx']['error']}"
        out.append({"loc": e.get("loc"), "field": field, "msg": msg, "type": e.get("type")})
    return out


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": _readable(list(error.errors()))}, status_code=422)


class Problem(BaseModel):
    """The body of every refusal."""

    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int] | None
    field: str
    msg: str
    type: str | None


class InvalidProblem(BaseModel):
    """422: a list naming each invalid field, or one sentence when the values conflict."""

    detail: list[FieldProblem] | str


_MEANING = {
    401: "no token, or a token that is not configured",
    403: "the token's role may not do this",
    404: "an id in the request does not exist",
    409: "conflicts with stored state",
    413: "the body is larger than the limit",
    415: "the body is not JSON",
    422: "invalid input; the detail names the field",
    503: "storage (or the model) is unavailable; retry after Retry-After seconds",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    503: {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}},
}


def _refusals(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    """The refusal codes an operation can answer, from where it lives and what it takes."""
    if not path.startswith("/v1/"):
        return []
    codes = [401, 403, 404, 422, 503]  # every /v1 operation: auth, ids, input, the database
    if method in ("put", "post", "patch", "delete"):
        codes.append(409)
    if "requestBody" in operation:
        codes += [413, 415]
    return sorted(codes)


def _document_refusals(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (Problem, InvalidProblem):
        defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in defs.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = defs
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            for code in _refusals(path, method, operation):
                body = InvalidProblem if code == 422 else Problem
                entry: dict[str, Any] = {
                    "description": responses.get(str(code), {}).get("description")
                    or _MEANING[code],
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{body.__name__}"}
                        }
                    },
                }
                if code in _HEADERS:
                    entry["headers"] = _HEADERS[code]
                responses[str(code)] = entry


def install(app: FastAPI) -> None:
    app.add_exception_handler(OracleError, _oracle_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    generate = app.openapi
    documented: list[int] = []  # id() of the document that has them: FastAPI caches it

    def openapi() -> dict[str, Any]:
        document = generate()
        if documented != [id(document)]:
            _document_refusals(document)
            documented[:] = [id(document)]
        return document

    app.openapi = openapi  # type: ignore[method-assign]
