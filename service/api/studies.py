"""Studies: the groups of runs that are compared with each other."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from sqlalchemy.orm import Session
from structlog import get_logger

from core import store
from service.api.present import study_public
from service.auth import Forbidden, Principal, Role, require
from service.bodies import JSONRoute
from service.schemas import ID_PATTERN, StudyList, StudyPublic, StudyPut
from service.state import state_of

router = APIRouter(prefix="/v1/studies", tags=["studies"], route_class=JSONRoute)
log = get_logger()
StudyId = Annotated[str, Path(pattern=ID_PATTERN)]


@router.put("/{study_id}", response_model=StudyPublic, responses={201: {"model": StudyPublic}})
async def put_study(
    study_id: StudyId,
    body: StudyPut,
    request: Request,
    response: Response,
    who: Principal = Depends(require(Role.worker)),
) -> StudyPublic:
    """Create or update a study. Changing its policy needs the admin role."""
    if body.policy is not None and who.role < Role.admin:
        raise Forbidden("changing a study's policy needs the admin role")
    state = state_of(request)

    def work(session: Session) -> tuple[StudyPublic, bool]:
        study, created = store.put_study(
            session,
            study_id,
            description=body.description,
            policy=body.policy,
            description_given="description" in body.model_fields_set,
        )
        state.references.invalidate(study.pk)  # this process decides with the new policy now
        return study_public(study, store.study_run_counts(session, study)), created

    result, created = await state.write(work)
    if body.policy is not None:
        log.info(
            "study_policy_set", study_id=study_id, by=who.name, policy=body.policy.model_dump()
        )
    response.status_code = 201 if created else 200
    return result


@router.get("", response_model=StudyList)
def list_studies(request: Request, _: Principal = Depends(require(Role.reader))) -> StudyList:
    with state_of(request).reading() as session:
        return StudyList(studies=[study_public(s, c) for s, c in store.list_studies(session)])


@router.get("/{study_id}", response_model=StudyPublic)
def get_study(
    study_id: StudyId, request: Request, _: Principal = Depends(require(Role.reader))
) -> StudyPublic:
    with state_of(request).reading() as session:
        study = store.get_study(session, study_id)
        return study_public(study, store.study_run_counts(session, study))
