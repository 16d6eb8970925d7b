"""Per-study aggregates for the dashboard: run counts, epochs and wall time saved by stops,
decisions by policy. Every figure is a SQL aggregate; no table is walked row by row in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal, select
from sqlalchemy.orm import Session

from core.store import RUN_STATUSES
from core.tables import Checkpoint, Run, Study

# The share saved is measured against the epochs that ended runs had planned: a running run's
# fate is not known yet, and a failed run ended for reasons no policy chose.
ENDED_BY_POLICY = ("completed", "stopped")


@dataclass(frozen=True)
class DecisionCount:
    policy: str
    action: str
    count: int


@dataclass(frozen=True)
class StudySummary:
    """What one study's search has cost and what the stops have saved so far."""

    study_id: str
    runs: dict[str, int]  # by status, plus "total"
    epochs_planned: int  # sum of max_epochs over all runs
    epochs_run: int  # sum of the last stored epoch over all runs
    epochs_saved: int  # sum over stopped runs of max_epochs - last epoch
    epochs_planned_ended: int  # sum of max_epochs over completed and stopped runs
    saved_share: float | None  # epochs_saved / epochs_planned_ended
    wall_s_run: float  # training seconds reported so far (each run's last reported wall_s)
    wall_s_saved: float  # estimate: per stopped run, seconds per epoch x epochs not run
    timed_stopped_runs: int  # stopped runs that reported wall_s (the estimate's basis)
    decisions: list[DecisionCount] = field(default_factory=list)


def study_summaries(session: Session) -> list[StudySummary]:
    """One summary per study, ordered by study id; studies without runs have zeros."""
    runs = _run_figures(session)
    walls = _wall_figures(session)
    decisions = _decision_counts(session)
    out = []
    for study_pk, study_id in session.execute(
        select(Study.pk, Study.study_id).order_by(Study.study_id)
    ):
        r = runs.get(study_pk, {})
        counts = {status: int(r.get(status, 0)) for status in RUN_STATUSES}
        counts["total"] = sum(counts.values())
        ended_planned = int(r.get("ended_planned", 0))
        saved = int(r.get("saved", 0))
        wall_run, wall_saved, timed = walls.get(study_pk, (0.0, 0.0, 0))
        out.append(
            StudySummary(
                study_id=study_id,
                runs=counts,
                epochs_planned=int(r.get("planned", 0)),
                epochs_run=int(r.get("run", 0)),
                epochs_saved=saved,
                epochs_planned_ended=ended_planned,
                saved_share=saved / ended_planned if ended_planned else None,
                wall_s_run=wall_run,
                wall_s_saved=wall_saved,
                timed_stopped_runs=timed,
                decisions=decisions.get(study_pk, []),
            )
        )
    return out


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(case((condition, 1), else_=0))


def _run_figures(session: Session) -> dict[int, dict[str, int]]:
    """Counts by status and epoch sums per study: one grouped scan of the runs."""
    last = func.coalesce(Run.last_epoch, 0)
    columns = [_count_if(Run.status == status).label(status) for status in RUN_STATUSES]
    query = select(
        Run.study_pk,
        *columns,
        func.sum(Run.max_epochs).label("planned"),
        func.sum(last).label("run"),
        func.sum(case((Run.status == "stopped", Run.max_epochs - last), else_=0)).label("saved"),
        func.sum(case((Run.status.in_(ENDED_BY_POLICY), Run.max_epochs), else_=0)).label(
            "ended_planned"
        ),
    ).group_by(Run.study_pk)
    return {row.study_pk: dict(row._mapping) for row in session.execute(query)}


def _wall_figures(session: Session) -> dict[int, tuple[float, float, int]]:
    """Per study: seconds reported, seconds saved (estimate), and the stopped runs timed.

    `wall_s` is the seconds since the run started (what the worker SDK sends), so a run's
    seconds per epoch are its largest wall_s over the epoch it was reported at.
    """
    per_run = (
        select(
            Checkpoint.run_pk.label("run_pk"),
            func.max(Checkpoint.wall_s).label("wall"),
            func.max(Checkpoint.epoch).label("epoch"),
        )
        .where(Checkpoint.wall_s.is_not(None), Checkpoint.epoch > 0)
        .group_by(Checkpoint.run_pk)
        .subquery()
    )
    stopped = Run.status == "stopped"
    not_run = Run.max_epochs - func.coalesce(Run.last_epoch, 0)
    saved = case(
        (stopped, per_run.c.wall / per_run.c.epoch * not_run),
        else_=literal(0.0),
    )
    query = (
        select(
            Run.study_pk,
            func.sum(per_run.c.wall).label("wall_run"),
            func.sum(saved).label("wall_saved"),
            _count_if(stopped).label("timed"),
        )
        .join(per_run, per_run.c.run_pk == Run.pk)
        .group_by(Run.study_pk)
    )
    return {
        row.study_pk: (float(row.wall_run or 0.0), float(row.wall_saved or 0.0), int(row.timed))
        for row in session.execute(query)
    }


def _decision_counts(session: Session) -> dict[int, list[DecisionCount]]:
    """Decisions by policy and action per study: one grouped scan of the checkpoints."""
    query = (
        select(Run.study_pk, Checkpoint.policy, Checkpoint.action, func.count().label("n"))
        .join(Run, Run.pk == Checkpoint.run_pk)
        .group_by(Run.study_pk, Checkpoint.policy, Checkpoint.action)
        .order_by(Run.study_pk, Checkpoint.policy, Checkpoint.action)
    )
    out: dict[int, list[DecisionCount]] = {}
    for study_pk, policy, action, n in session.execute(query):
        out.setdefault(study_pk, []).append(DecisionCount(policy, action, int(n)))
    return out
