"""The dashboard: the page at `/`, its assets under `/static`, and the one aggregate it reads.

The page itself is public (it holds no data); everything it shows comes through the API with
the reader token the person gives it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from core import summary
from service.auth import Principal, Role, require
from service.bodies import JSONRoute
from service.schemas import RunCounts
from service.state import state_of

PAGE_DIR = Path(__file__).resolve().parent.parent / "dashboard"
# Everything the page loads is its own: no inline script, no other origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",  # a ?token= in the address must not travel on
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["dashboard"], route_class=JSONRoute)
router.mount("/static", StaticFiles(directory=PAGE_DIR / "static"), name="static")


class DecisionCountPublic(BaseModel):
    policy: str
    action: str
    count: int


class StudySummaryPublic(BaseModel):
    study_id: str
    runs: RunCounts
    epochs_planned: int
    epochs_run: int
    epochs_saved: int
    epochs_planned_ended: int
    saved_share: float | None
    wall_s_run: float
    wall_s_saved: float
    timed_stopped_runs: int
    decisions: list[DecisionCountPublic]


class DashboardSummary(BaseModel):
    studies: list[StudySummaryPublic]
    generated_at: datetime


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def show_dashboard() -> HTMLResponse:
    return HTMLResponse((PAGE_DIR / "index.html").read_text(), headers=PAGE_HEADERS)


@router.get("/v1/dashboard/summary", response_model=DashboardSummary)
def summarize_studies(
    request: Request, _: Principal = Depends(require(Role.reader))
) -> DashboardSummary:
    """Per study: runs by status, epochs planned/run/saved, wall time saved, decisions."""
    with state_of(request).reading() as session:
        rows = summary.study_summaries(session)
    return DashboardSummary(
        studies=[StudySummaryPublic.model_validate(s, from_attributes=True) for s in rows],
        generated_at=datetime.now(UTC),
    )
