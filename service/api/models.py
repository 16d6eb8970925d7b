"""Model versions in the registry; activating one moves the alias every process follows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy.orm import Session
from structlog import get_logger

from core import registry
from core.errors import NotFound
from core.tables import ModelVersion
from service.auth import Principal, Role, require
from service.bodies import JSONRoute
from service.schemas import ID_PATTERN, ModelList, ModelPublic
from service.state import state_of

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=JSONRoute)
log = get_logger()


def _public(row: ModelVersion, active: str | None) -> ModelPublic:
    return ModelPublic(
        version=row.version,
        architecture=row.architecture,
        status=row.status,
        active=row.version == active,
        reason=row.reason,
        created_at=row.created_at,
        metrics=dict(row.manifest.get("metrics", {})),
    )


@router.get("", response_model=ModelList)
def list_models(request: Request, _: Principal = Depends(require(Role.reader))) -> ModelList:
    with state_of(request).reading() as session:
        active = registry.active_version(session)
        return ModelList(
            models=[_public(row, active) for row in registry.list_versions(session)],
            active=active,
        )


@router.get("/active", response_model=ModelPublic)
def get_active_model(request: Request, _: Principal = Depends(require(Role.reader))) -> ModelPublic:
    with state_of(request).reading() as session:
        active = registry.active_version(session)
        if active is None:
            raise NotFound("no model version is active; decisions use the fallback policies")
        return _public(registry.get_version(session, active), active)


@router.post("/{version}/activate", response_model=ModelPublic)
async def activate_model(
    version: Annotated[str, Path(pattern=ID_PATTERN)],
    request: Request,
    who: Principal = Depends(require(Role.admin)),
) -> ModelPublic:
    """Point the active alias at `version` (also the rollback); every process swaps to it."""

    def work(session: Session) -> ModelPublic:
        return _public(registry.activate(session, version, by=who.name), version)

    result = await state_of(request).write(work)
    log.info("model_activated", version=version, by=who.name)
    return result
