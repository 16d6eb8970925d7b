"""Runs: one SOM training each; its checkpoints are answered with decisions."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from core import store
from core.errors import InvalidInput
from service.api.present import checkpoint_public, run_public
from service.auth import Principal, Role, require
from service.bodies import JSONRoute
from service.schemas import (
    ID_PATTERN,
    CheckpointIn,
    Decision,
    RunCreate,
    RunDetail,
    RunFinish,
    RunPage,
    RunPublic,
)
from service.state import state_of

router = APIRouter(prefix="/v1/runs", tags=["runs"], route_class=JSONRoute)
RunId = Annotated[str, Path(pattern=ID_PATTERN)]


def _spec(body: RunCreate) -> store.RunSpec:
    return store.RunSpec(
        study_id=body.study_id, max_epochs=body.max_epochs, config=body.config, dataset=body.dataset
    )


# The checkpoint route first: routes are matched in declaration order, one regex each.
@router.post(
    "/{run_id}/checkpoints",
    response_model=Decision,
    responses={409: {"description": "conflicts with the stored history"}},
)
async def record_checkpoint(
    run_id: RunId,
    body: CheckpointIn,
    request: Request,
    _: Principal = Depends(require(Role.worker)),
) -> Decision:
    """Store a checkpoint and answer continue or stop. A retry gets the stored answer."""
    # Checkpoints that arrive together are stored together: see service/recorder.py.
    return await state_of(request).recorder.record(run_id, body)


@router.post("/{run_id}/finish", response_model=RunPublic)
async def finish_run(
    run_id: RunId,
    body: RunFinish,
    request: Request,
    _: Principal = Depends(require(Role.worker)),
) -> RunPublic:
    """End a run. Completed runs that reached max_epochs become reference and training data."""
    final = (
        store.Metrics.of(body.final.mqe, body.final.topographic_error, body.final.dead_neuron_ratio)
        if body.final is not None
        else None
    )
    return await state_of(request).recorder.finish(run_id, body.status, final)


@router.put(
    "/{run_id}",
    response_model=RunPublic,
    responses={201: {"model": RunPublic}, 409: {"description": "the id exists with another body"}},
)
async def put_run(
    run_id: RunId,
    body: RunCreate,
    request: Request,
    response: Response,
    _: Principal = Depends(require(Role.worker)),
) -> RunPublic:
    """Start a run under a worker-chosen id; the same body again returns the stored run."""
    result, created = await state_of(request).recorder.start(run_id, _spec(body))
    response.status_code = 201 if created else 200
    return result


@router.post("", response_model=RunPublic, status_code=201)
async def create_run(
    body: RunCreate, request: Request, _: Principal = Depends(require(Role.worker))
) -> RunPublic:
    """Start a run under an id the server picks."""
    run_id = f"run-{uuid.uuid4().hex}"
    result, _created = await state_of(request).recorder.start(run_id, _spec(body))
    return result


@router.get("/{run_id}", response_model=RunDetail)
def get_run(
    run_id: RunId, request: Request, _: Principal = Depends(require(Role.reader))
) -> RunDetail:
    with state_of(request).reading() as session:
        run = store.get_run(session, run_id)
        public = run_public(run, store.study_of(session, run).study_id)
        checkpoints = [checkpoint_public(run_id, c) for c in store.checkpoints_of(session, run.pk)]
        return RunDetail(**public.model_dump(), checkpoints=checkpoints)


@router.get("", response_model=RunPage)
def list_runs(
    request: Request,
    study_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    status: Literal["running", "completed", "stopped", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    _: Principal = Depends(require(Role.reader)),
) -> RunPage:
    """Runs newest first. Follow `next_cursor` for the next page."""
    with state_of(request).reading() as session:
        page = store.list_runs(
            session, study_id=study_id, status=status, limit=limit, before_pk=_decode(cursor)
        )
        return RunPage(
            runs=[run_public(run, sid) for run, sid in page.runs],
            next_cursor=_encode(page.next_cursor) if page.next_cursor is not None else None,
        )


def _encode(pk: int) -> str:
    return base64.urlsafe_b64encode(f"r{pk}".encode()).decode().rstrip("=")


def _decode(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("r"):
            raise ValueError(text)
        return int(text[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise InvalidInput("cursor is not one this service returned") from e
