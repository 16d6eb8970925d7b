"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from core import schema
from core.errors import StorageUnavailable
from service import metrics
from service.state import state_of

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it answers without touching the database)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "the database does not answer, or its schema is not at this code's "
            "head (with Retry-After)"
        }
    },
)
def readyz(request: Request) -> JSONResponse:
    """Ready: the database answers with its schema at head, and a policy can decide (the
    model, or a fallback)."""
    state = state_of(request)
    model = state.models.version
    body: dict[str, str | None] = {
        "database": "ok",
        "backend": state.db.backend,
        "schema": None,
        "model_version": model,
        "policy": "oracle" if model else "median",
    }
    try:
        with state.reading() as session:
            current = schema.revision_of(session.connection())
    except StorageUnavailable as e:
        body["database"] = body["detail"] = str(e)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    body["schema"] = current
    if current != schema.HEAD:  # migrated down or ahead under a running service
        described = schema.Revision.of(current).describe()
        body["detail"] = f"not ready: the schema is not at head ({described})"
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse(body)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def prometheus_metrics() -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)
