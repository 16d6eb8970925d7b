"""Runs: started by a worker (idempotent by id), ended (joining their study's reference set when
completed at max_epochs), listed; and RunState, what the writer keeps of a running run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import Connection, Table, bindparam, select, update
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from core.features import encode_context
from core.reference import HistoryRow, history_array, history_row
from core.store.checkpoints import Metrics, find_checkpoint, histories_of
from core.store.studies import get_study, insert_new, study_pk_of
from core.tables import FINISHED_STATUSES, Run, Study, utcnow

_runs = cast(Table, Run.__table__)
_studies = cast(Table, Study.__table__)


@dataclass(frozen=True)
class RunSpec:
    """What a worker says about a run when it starts it."""

    study_id: str
    max_epochs: int
    config: dict[str, Any] | None = None
    dataset: str | None = None


# What the writer reads of a run: RunState's stored fields.
_STATE_COLUMNS = (
    _runs.c.pk,
    _runs.c.run_id,
    _runs.c.study_pk,
    _runs.c.max_epochs,
    _runs.c.status,
    _runs.c.last_epoch,
    _runs.c.config,
    _runs.c.dataset,
    _runs.c.created_at,
)


@dataclass
class RunState:
    """What the writer needs of a run; a process keeps these for running runs."""

    pk: int
    run_id: str
    study_pk: int
    max_epochs: int
    status: str
    last_epoch: int | None
    config: dict[str, Any] | None
    dataset: str | None
    created_at: datetime
    history: list[HistoryRow] = field(default_factory=list)
    # `history` as history_array rows, kept between checkpoints so that the next one costs one
    # row, not the whole history; rebuilt whenever its length disagrees with `history`.
    _array: np.ndarray | None = field(default=None, repr=False, compare=False)
    _context: np.ndarray | None = field(default=None, repr=False, compare=False)

    def context(self) -> np.ndarray:
        """The run's configuration and length as the model reads them, made once per run."""
        if self._context is None:
            self._context = encode_context(self.config, self.max_epochs)
            self._context.flags.writeable = False
        return self._context

    def history_with(self, point: HistoryRow) -> np.ndarray:
        """The history with `point` after it, as a read-only history_array."""
        n = len(self.history)
        array = self._array
        if array is None or array.shape[0] != n:
            array = self._array = history_array(self.history, self.max_epochs)
        out = np.empty((n + 1, 4), dtype=np.float64)
        out[:n] = array
        out[n] = history_row(point, self.max_epochs)
        out.flags.writeable = False  # shared by the decision and, once stored, by the next
        return out

    def append(self, point: HistoryRow, array: np.ndarray | None = None) -> None:
        """`point` was stored: it is the run's last checkpoint now. `array`: what
        `history_with(point)` returned, kept for the next checkpoint."""
        self.history.append(point)
        self.last_epoch = point[0]
        self._array = array

    def last_metrics(self) -> Metrics:
        """The last checkpoint's metrics: a run's finals when its worker gives none."""
        if not self.history:
            return Metrics(None, None, None)
        _, mqe, te, dead = self.history[-1]
        return Metrics(mqe, te, dead)

    def is_current(self, current: dict[int, tuple[str, int | None]]) -> bool:
        """Whether the run, as `lock_runs` read it, is still running at this state's epoch:
        a view that went stale (another replica moved it on, or ended it) is not trusted."""
        return current.get(self.pk) == ("running", self.last_epoch)

    @classmethod
    def of(cls, row: Any) -> RunState:
        """From a row of the state's columns, or a Run."""
        return cls(
            row.pk,
            row.run_id,
            row.study_pk,
            row.max_epochs,
            row.status,
            row.last_epoch,
            row.config,
            row.dataset,
            row.created_at,
        )


def find_run(session: Session, run_id: str) -> Run | None:
    return session.scalar(select(Run).where(Run.run_id == run_id))


def get_run(session: Session, run_id: str, *, for_update: bool = False) -> Run:
    """The run, or NotFound. `for_update`: its row locked until the transaction ends (on
    SQLite the writer's BEGIN IMMEDIATE holds the whole database already), for a caller that
    writes it after deciding from what it read."""
    query = select(Run).where(Run.run_id == run_id)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    run = session.scalar(query)
    if run is None:
        raise NotFound(f"run {run_id!r} does not exist")
    return run


def study_of(session: Session, run: Run) -> Study:
    return session.get_one(Study, run.study_pk)


def _same_spec(run: Run, study: Study, spec: RunSpec) -> bool:
    return (
        study.study_id == spec.study_id
        and run.max_epochs == spec.max_epochs
        and run.config == spec.config
        and run.dataset == spec.dataset
    )


def create_run(session: Session, run_id: str, spec: RunSpec) -> tuple[Run, bool]:
    """Create the run, or return the stored one if the same body was sent before.

    Returns the run and whether it was created; a different body for a stored id is a
    Conflict.
    """
    existing = find_run(session, run_id)
    if existing is None:
        conn = session.connection()
        started = insert_new_runs(conn, [(run_id, study_pk_of(conn, spec.study_id), spec)])
        if run_id in started:
            return session.get_one(Run, started[run_id].pk), True
        # Another process created the same id between our read and our insert.
        existing = find_run(session, run_id)
        if existing is None:
            raise Conflict(f"run {run_id!r} could not be created; retry")
    study = study_of(session, existing)
    if not _same_spec(existing, study, spec):
        raise Conflict(
            f"run {run_id!r} exists with another body (study {study.study_id!r}, "
            f"max_epochs {existing.max_epochs}); choose another run_id"
        )
    return existing, False


@dataclass(frozen=True)
class RunPage:
    runs: Sequence[tuple[Run, str]]
    next_cursor: int | None


def list_runs(
    session: Session,
    *,
    study_id: str | None,
    status: str | None,
    limit: int,
    before_pk: int | None,
) -> RunPage:
    """Runs newest first, keyset-paged by the run's surrogate key."""
    query = select(Run, Study.study_id).join(Study, Study.pk == Run.study_pk)
    if study_id is not None:
        study = get_study(session, study_id)
        query = query.where(Run.study_pk == study.pk)
    if status is not None:
        query = query.where(Run.status == status)
    if before_pk is not None:
        query = query.where(Run.pk < before_pk)
    rows = session.execute(query.order_by(Run.pk.desc()).limit(limit + 1)).all()
    page = [(run, sid) for run, sid in rows[:limit]]
    next_cursor = page[-1][0].pk if len(rows) > limit else None
    return RunPage(page, next_cursor)


def joins_reference(status: str, last_epoch: int | None, max_epochs: int) -> bool:
    """Whether a run ending so joins its study's reference set (median rule, percentile
    thresholds) and becomes training data: completed, at max_epochs."""
    return status == "completed" and last_epoch == max_epochs


def finish_run(session: Session, run: Run, status: str, final: Metrics | None) -> tuple[Run, bool]:
    """End a run; returns it and whether this call changed it (False: an identical retry).
    `final` defaults to the last checkpoint's metrics."""
    if status not in FINISHED_STATUSES:
        raise Conflict(f"status must be one of {FINISHED_STATUSES}, not {status!r}")
    run = session.get_one(Run, run.pk, with_for_update=True, populate_existing=True)
    if final is None:
        last = (
            find_checkpoint(session, run.pk, run.last_epoch) if run.last_epoch is not None else None
        )
        final = (
            Metrics(last.mqe, last.topographic_error, last.dead_neuron_ratio)
            if last is not None
            else Metrics(None, None, None)
        )
    if run.status != "running":
        stored = Metrics(run.final_mqe, run.final_topographic_error, run.final_dead_neuron_ratio)
        if run.status == status and stored == final:
            return run, False
        raise Conflict(f"run {run.run_id!r} already ended as {run.status} with other final values")
    end_runs(session.connection(), [(RunState.of(run), status, final)], utcnow())
    session.refresh(run)
    return run, True


# --- many runs at once: the writer's batch (core.store.batch) and the functions above -----

_LOCK = (
    select(_runs.c.pk, _runs.c.status, _runs.c.last_epoch)
    .where(_runs.c.pk.in_(bindparam("b_pks", expanding=True)))
    .order_by(_runs.c.pk)  # one lock order for every writer: no deadlock between replicas
    .with_for_update()
)
_STATES = select(*_STATE_COLUMNS).where(_runs.c.run_id.in_(bindparam("b_run_ids", expanding=True)))
_END = (
    update(_runs)
    .where(_runs.c.pk == bindparam("b_pk"))
    .values(
        status=bindparam("b_status"),
        final_mqe=bindparam("b_mqe"),
        final_topographic_error=bindparam("b_te"),
        final_dead_neuron_ratio=bindparam("b_dead"),
        finished_at=bindparam("b_at"),
        reference_seq=bindparam("b_seq"),
    )
)
_JOIN_REFERENCE = (
    update(_studies)
    .where(_studies.c.pk == bindparam("b_study_pk"))
    .values(reference_runs=_studies.c.reference_runs + bindparam("b_joining"))
    .returning(_studies.c.reference_runs)
)


def lock_runs(conn: Connection, run_pks: Sequence[int]) -> dict[int, tuple[str, int | None]]:
    """Each run's (status, last epoch), its row locked until the transaction ends (Postgres;
    on SQLite the writer's BEGIN IMMEDIATE holds the database already): what a write of the
    run checks its view against (RunState.is_current)."""
    out: dict[int, tuple[str, int | None]] = {}
    pks = sorted(set(run_pks))
    for start in range(0, len(pks), 500):
        for pk, status, last_epoch in conn.execute(_LOCK, {"b_pks": pks[start : start + 500]}):
            out[pk] = (status, last_epoch)
    return out


def load_run_states(conn: Connection, run_ids: Sequence[str]) -> dict[str, RunState]:
    """The named runs with their histories: two queries for up to 500 runs."""
    states = {r.run_id: RunState.of(r) for r in conn.execute(_STATES, {"b_run_ids": list(run_ids)})}
    histories = histories_of(conn, [s.pk for s in states.values()])
    for state in states.values():
        state.history = histories[state.pk]
    return states


def insert_new_runs(
    conn: Connection, starts: Sequence[tuple[str, int, RunSpec]], now: datetime | None = None
) -> dict[str, RunState]:
    """Insert the runs (id, study key, spec) whose ids are free, in one multi-row INSERT; the
    states of those inserted. An id that exists is left out: a retry or a conflict, which
    create_run tells apart."""
    if not starts:
        return {}
    rows = [
        {
            "run_id": run_id,
            "study_pk": study_pk,
            "max_epochs": spec.max_epochs,
            "config": spec.config,
            "dataset": spec.dataset,
            "status": "running",
            "n_checkpoints": 0,
            "created_at": now or utcnow(),
        }
        for run_id, study_pk, spec in starts
    ]
    statement = insert_new(conn, _runs, "run_id").returning(*_STATE_COLUMNS)
    return {row.run_id: RunState.of(row) for row in conn.execute(statement, rows)}


def end_runs(
    conn: Connection, ends: Sequence[tuple[RunState, str, Metrics]], finished_at: datetime
) -> None:
    """End these runs (state, status, finals). Those completed at max_epochs join their
    study's reference set, numbered in this order. The caller holds each run's row lock and
    checked it is still running at its state's epoch."""
    if not ends:
        return
    joining: dict[int, list[int]] = {}
    for state, status, _ in ends:
        if joins_reference(status, state.last_epoch, state.max_epochs):
            joining.setdefault(state.study_pk, []).append(state.pk)
    seqs: dict[int, int] = {}
    for study_pk, pks in sorted(joining.items()):  # one lock order for every writer
        params = {"b_study_pk": study_pk, "b_joining": len(pks)}
        top = conn.execute(_JOIN_REFERENCE, params).scalar_one()
        seqs |= {pk: top - len(pks) + 1 + n for n, pk in enumerate(pks)}
    rows = [
        {
            "b_pk": state.pk,
            "b_status": status,
            "b_mqe": final.mqe,
            "b_te": final.topographic_error,
            "b_dead": final.dead_neuron_ratio,
            "b_at": finished_at,
            "b_seq": seqs.get(state.pk),
        }
        for state, status, final in ends
    ]
    conn.execute(_END, rows)
