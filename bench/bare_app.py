"""The real app plus bench-only "bare" routes: same body validation and auth, constant answers.

Started by bench/replay.py as `uvicorn bench.bare_app:create --factory`, so that the checkpoint
endpoint and its bare twin are measured in the same process with the same settings. The bare
routes are what the service would cost if storing and deciding were free.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, FastAPI
from starlette.routing import Mount

from service.api.runs import RunId
from service.auth import Principal, Role, require
from service.bodies import JSONRoute
from service.main import create_app
from service.schemas import (
    CheckpointIn,
    Decision,
    RunCreate,
    RunFinish,
    RunPublic,
)
from service.settings import Settings

BARE_DECISION = Decision(
    run_id="bare",
    epoch=0,
    action="continue",
    reason="the bare endpoint always continues",
    policy="bare",
)
BARE_RUN = RunPublic(
    run_id="bare",
    study_id="bare",
    max_epochs=1,
    config=None,
    dataset=None,
    status="running",
    last_epoch=None,
    n_checkpoints=0,
    final=None,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    finished_at=None,
)


async def bare_checkpoint(
    run_id: RunId, body: CheckpointIn, _: Principal = Depends(require(Role.worker))
) -> Decision:
    """Validates a checkpoint body like the real route, stores nothing, always continues."""
    return BARE_DECISION


async def bare_put_run(
    run_id: RunId, body: RunCreate, _: Principal = Depends(require(Role.worker))
) -> RunPublic:
    return BARE_RUN


async def bare_finish(
    run_id: RunId, body: RunFinish, _: Principal = Depends(require(Role.worker))
) -> RunPublic:
    return BARE_RUN


# Declared like the real routes (service/api/runs.py): routes of the same route class,
# so the bare twins parse the body with the same strict JSON decoder (415 for another content
# type, 422 for a key given twice).
router = APIRouter(route_class=JSONRoute, include_in_schema=False)
router.add_api_route(
    "/{run_id}/checkpoints", bare_checkpoint, methods=["POST"], response_model=Decision
)
router.add_api_route("/{run_id}", bare_put_run, methods=["PUT"], response_model=RunPublic)
router.add_api_route("/{run_id}/finish", bare_finish, methods=["POST"], response_model=RunPublic)


def create(settings: Settings | None = None) -> FastAPI:
    """`create_app(settings)` with the bare routes under /bench/bare/.

    They sit under a Mount, first in the routing table: a request elsewhere pays one prefix
    check (~1 µs) to pass them, as close as a bench can get to the service alone. Included
    as a router instead, anywhere in the table, they cost somebody a walk: first, each of
    the service's requests tried the three bare routes and missed (~8 µs, FastAPI 0.165);
    last, each bare request would try every route of the service.
    """
    app = create_app(settings)
    app.router.routes.insert(0, Mount("/bench/bare", routes=router.routes))
    return app
