"""A study's reference set as stored: how many runs joined it, and the histories of those that
joined after a given number, read through the (study_pk, reference_seq) index."""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from core.reference import HistoryRow
from core.scoring import StudyPolicy
from core.store.checkpoints import Metrics, histories_of
from core.tables import Run, Study


def study_state(session: Session | Connection, study_pk: int) -> tuple[int, StudyPolicy]:
    """How many runs joined the study's reference set, and its policy: one primary-key read."""
    row = session.execute(
        select(Study.reference_runs, Study.policy).where(Study.pk == study_pk)
    ).one()
    return int(row[0]), StudyPolicy.model_validate(row[1])


def reference_histories_since(
    session: Session | Connection, study_pk: int, after_seq: int, limit: int | None = None
) -> list[tuple[int, int, list[HistoryRow], Metrics]]:
    """Reference runs of a study that joined after `after_seq`, as (number, max_epochs,
    history, finals), in the order they joined; the first `limit` of them, if given.

    Walks the (study_pk, reference_seq) index and the checkpoints' primary key: the cost is
    the new runs only, never a scan of the study.
    """
    query = (
        select(
            Run.pk,
            Run.reference_seq,
            Run.max_epochs,
            Run.final_mqe,
            Run.final_topographic_error,
            Run.final_dead_neuron_ratio,
        )
        .where(Run.study_pk == study_pk, Run.reference_seq > after_seq)
        .order_by(Run.reference_seq)
    )
    runs = session.execute(query if limit is None else query.limit(limit)).all()
    if not runs:
        return []
    by_run = histories_of(session, [r.pk for r in runs])
    return [
        (
            r.reference_seq,
            r.max_epochs,
            by_run[r.pk],
            Metrics(r.final_mqe, r.final_topographic_error, r.final_dead_neuron_ratio),
        )
        for r in runs
    ]
