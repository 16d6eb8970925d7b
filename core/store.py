"""Reads and writes of studies, runs and checkpoints. Takes a session, flushes, never commits."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import numpy as np
import orjson
from sqlalchemy import (
    Connection,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    column,
    func,
    insert,
    select,
    text,
    update,
    values,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from core.db import driver_execute
from core.errors import Conflict, NotFound
from core.features import encode_context
from core.reference import HistoryRow, history_array, history_row
from core.scoring import StudyPolicy
from core.tables import Checkpoint, Run, Study, utcnow

RUN_STATUSES = ("running", "completed", "stopped", "failed")
FINISHED_STATUSES = ("completed", "stopped", "failed")


def finite_or_none(value: float | None) -> float | None:
    """Non-finite metrics (null, NaN, ±Infinity) are stored as NULL: 'not a number'."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Metrics:
    mqe: float | None
    topographic_error: float | None
    dead_neuron_ratio: float | None

    @classmethod
    def of(cls, mqe: float | None, te: float | None, dead: float | None) -> Metrics:
        return cls(finite_or_none(mqe), finite_or_none(te), finite_or_none(dead))

    @property
    def finite(self) -> bool:
        return None not in (self.mqe, self.topographic_error, self.dead_neuron_ratio)

    def as_dict(self) -> dict[str, float | None]:
        return {
            "mqe": self.mqe,
            "topographic_error": self.topographic_error,
            "dead_neuron_ratio": self.dead_neuron_ratio,
        }


_DIALECTS = {"sqlite": sqlite, "postgresql": postgresql}


def _insert(session: Session) -> Any:
    return _DIALECTS[session.get_bind().dialect.name].insert


# --- studies ---------------------------------------------------------------------------------


def find_study(session: Session, study_id: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_id == study_id))


def get_study(session: Session, study_id: str) -> Study:
    study = find_study(session, study_id)
    if study is None:
        raise NotFound(f"study {study_id!r} does not exist")
    return study


def ensure_study(session: Session, study_id: str) -> Study:
    """The study, created with the default policy if it does not exist (race-free)."""
    study = find_study(session, study_id)
    if study is not None:
        return study
    return session.get_one(Study, study_pk_of(session.connection(), study_id))


def put_study(
    session: Session,
    study_id: str,
    *,
    description: str | None,
    policy: StudyPolicy | None,
    description_given: bool,
) -> tuple[Study, bool]:
    """Create or update a study; returns it and whether it was created."""
    study = find_study(session, study_id)
    created = study is None
    study = ensure_study(session, study_id)
    if description_given:
        study.description = description
    if policy is not None:
        study.policy = policy.model_dump(mode="json")
    if description_given or policy is not None:
        study.updated_at = utcnow()
    session.flush()
    return study, created


def study_policy(study: Study) -> StudyPolicy:
    return StudyPolicy.model_validate(study.policy)


def list_studies(session: Session) -> list[tuple[Study, dict[str, int]]]:
    counts: dict[int, dict[str, int]] = {}
    for study_pk, status, n in session.execute(
        select(Run.study_pk, Run.status, func.count()).group_by(Run.study_pk, Run.status)
    ):
        counts.setdefault(study_pk, {})[status] = n
    studies = session.scalars(select(Study).order_by(Study.study_id)).all()
    return [(s, run_counts(counts.get(s.pk, {}))) for s in studies]


def study_run_counts(session: Session, study: Study) -> dict[str, int]:
    rows = session.execute(
        select(Run.status, func.count()).where(Run.study_pk == study.pk).group_by(Run.status)
    )
    return run_counts({status: n for status, n in rows})


def run_counts(by_status: dict[str, int]) -> dict[str, int]:
    counts = {status: by_status.get(status, 0) for status in RUN_STATUSES}
    counts["total"] = sum(counts.values())
    return counts


# --- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """What a worker says about a run when it starts it."""

    study_id: str
    max_epochs: int
    config: dict[str, Any] | None = None
    dataset: str | None = None


def find_run(session: Session, run_id: str) -> Run | None:
    return session.scalar(select(Run).where(Run.run_id == run_id))


def get_run(session: Session, run_id: str) -> Run:
    run = find_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} does not exist")
    return run


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
        study = ensure_study(session, spec.study_id)
        run = Run(
            run_id=run_id,
            study_pk=study.pk,
            max_epochs=spec.max_epochs,
            config=spec.config,
            dataset=spec.dataset,
            status="running",
            n_checkpoints=0,
            created_at=utcnow(),
        )
        try:
            with session.begin_nested():
                session.add(run)
                session.flush()
        except IntegrityError as e:
            # Another process created the same id between our read and our insert.
            existing = find_run(session, run_id)
            if existing is None:
                raise Conflict(f"run {run_id!r} could not be created: {e.orig}") from e
        else:
            return run, True
    study = session.get_one(Study, existing.study_pk)
    if not _same_spec(existing, study, spec):
        raise Conflict(
            f"run {run_id!r} exists with another body (study {study.study_id!r}, "
            f"max_epochs {existing.max_epochs}); choose another run_id"
        )
    return existing, False


def study_of(session: Session, run: Run) -> Study:
    return session.get_one(Study, run.study_pk)


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


# --- checkpoints -----------------------------------------------------------------------------


def find_checkpoint(session: Session, run_pk: int, epoch: int) -> Checkpoint | None:
    return session.get(Checkpoint, (run_pk, epoch))


def checkpoints_of(session: Session, run_pk: int) -> Sequence[Checkpoint]:
    return session.scalars(
        select(Checkpoint).where(Checkpoint.run_pk == run_pk).order_by(Checkpoint.epoch)
    ).all()


def history_of(session: Session, run_pk: int) -> list[HistoryRow]:
    """(epoch, mqe, te, dead) of a run's stored checkpoints, in epoch order: the hot read."""
    rows = session.execute(
        select(
            Checkpoint.epoch,
            Checkpoint.mqe,
            Checkpoint.topographic_error,
            Checkpoint.dead_neuron_ratio,
        )
        .where(Checkpoint.run_pk == run_pk)
        .order_by(Checkpoint.epoch)
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def insert_checkpoint(session: Session, run: Run, values: dict[str, Any]) -> None:
    """Store one checkpoint with its decision and advance the run, atomically.

    The run row is advanced with a guarded UPDATE, so two processes racing on the same run
    cannot both store an epoch that is not above the last one.
    """
    epoch = values["epoch"]
    advanced = session.execute(
        update(Run)
        .where(
            Run.pk == run.pk,
            Run.status == "running",
            (Run.last_epoch.is_(None)) | (Run.last_epoch < epoch),
        )
        .values(last_epoch=epoch, n_checkpoints=Run.n_checkpoints + 1)
        .execution_options(synchronize_session=False)
    )
    if advanced.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"run {run.run_id!r} moved on while epoch {epoch} was being stored; retry")
    session.execute(_insert(session)(Checkpoint).values(run_pk=run.pk, **values))


def ensure_can_record(run: Run, epoch: int) -> None:
    if run.status != "running":
        raise Conflict(f"run {run.run_id!r} has ended ({run.status}); it takes no checkpoints")
    if epoch > run.max_epochs:
        raise Conflict(f"epoch {epoch} is above the run's max_epochs {run.max_epochs}")
    if run.last_epoch is not None and epoch < run.last_epoch:
        raise Conflict(
            f"epoch {epoch} is below the run's last stored epoch {run.last_epoch}; "
            "epochs must increase"
        )


def same_metrics(stored: Checkpoint, metrics: Metrics, wall_s: float | None) -> bool:
    return (
        stored.mqe == metrics.mqe
        and stored.topographic_error == metrics.topographic_error
        and stored.dead_neuron_ratio == metrics.dead_neuron_ratio
        and stored.wall_s == wall_s
    )


# --- finishing -------------------------------------------------------------------------------


def joins_reference(status: str, last_epoch: int | None, max_epochs: int) -> bool:
    """Whether a run ending so joins its study's reference set (median rule, percentile
    thresholds) and becomes training data: completed, at max_epochs."""
    return status == "completed" and last_epoch == max_epochs


def finish_run(session: Session, run: Run, status: str, final: Metrics | None) -> tuple[Run, bool]:
    """End a run; returns it and whether this call changed it (False: an identical retry)."""
    if status not in FINISHED_STATUSES:
        raise Conflict(f"status must be one of {FINISHED_STATUSES}, not {status!r}")
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
    run.status = status
    run.final_mqe = final.mqe
    run.final_topographic_error = final.topographic_error
    run.final_dead_neuron_ratio = final.dead_neuron_ratio
    run.finished_at = utcnow()
    if joins_reference(status, run.last_epoch, run.max_epochs):
        seq = session.execute(
            update(Study)
            .where(Study.pk == run.study_pk)
            .values(reference_runs=Study.reference_runs + 1)
            .returning(Study.reference_runs)
            .execution_options(synchronize_session=False)
        ).scalar_one()
        run.reference_seq = seq
    session.flush()
    return run, True


# --- the reference set -----------------------------------------------------------------------


def study_state(session: Session | Connection, study_pk: int) -> tuple[int, StudyPolicy]:
    """How many runs joined the study's reference set, and its policy: one primary-key read."""
    row = session.execute(
        select(Study.reference_runs, Study.policy).where(Study.pk == study_pk)
    ).one()
    return int(row[0]), StudyPolicy.model_validate(row[1])


def reference_histories_since(
    session: Session | Connection, study_pk: int, after_seq: int, limit: int | None = None
) -> list[tuple[int, int, list[tuple[int, float | None, float | None, float | None]], Metrics]]:
    """Reference runs of a study that joined after `after_seq`, with their histories, in the
    order they joined; the first `limit` of them, if given.

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


# --- the batched hot path --------------------------------------------------------------------
# What the group-committing writer (service/recorder.py) runs for a whole batch of the
# workers' requests: Core statements on the tables (no ORM unit of work), a few per batch
# rather than a few per request. Each is a compare-and-swap on the run rows, so a process's
# cached view that went stale (another replica, another writer) is noticed, never trusted:
# what a statement cannot settle (a retry, a conflict, a lost race) is left to the ORM
# functions above, one request at a time.

_runs = cast(Table, Run.__table__)
_studies = cast(Table, Study.__table__)
_checkpoints = cast(Table, Checkpoint.__table__)

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
_RUN_STATES = select(*_STATE_COLUMNS).where(
    _runs.c.run_id.in_(bindparam("run_ids", expanding=True))
)
_HISTORIES = (
    select(
        _checkpoints.c.run_pk,
        _checkpoints.c.epoch,
        _checkpoints.c.mqe,
        _checkpoints.c.topographic_error,
        _checkpoints.c.dead_neuron_ratio,
    )
    .where(_checkpoints.c.run_pk.in_(bindparam("run_pks", expanding=True)))
    .order_by(_checkpoints.c.run_pk, _checkpoints.c.epoch)
)
_INSERT_CHECKPOINTS = _checkpoints.insert()
_STUDY_PK = select(_studies.c.pk).where(_studies.c.study_id == bindparam("b_study_id"))
_NEW_STUDY = {
    name: dialect.insert(_studies).on_conflict_do_nothing(index_elements=["study_id"])
    for name, dialect in _DIALECTS.items()
}
# executemany with RETURNING: SQLAlchemy sends it as one multi-row INSERT per batch.
_NEW_RUNS = {
    name: dialect.insert(_runs)
    .on_conflict_do_nothing(index_elements=["run_id"])
    .returning(*_STATE_COLUMNS)
    for name, dialect in _DIALECTS.items()
}
_JOIN_REFERENCE = (
    update(_studies)
    .where(_studies.c.pk == bindparam("b_study_pk"))
    .values(reference_runs=_studies.c.reference_runs + bindparam("b_joining"))
    .returning(_studies.c.reference_runs)
)
_SET_REFERENCE_SEQ = (
    update(_runs).where(_runs.c.pk == bindparam("b_pk")).values(reference_seq=bindparam("b_seq"))
)


@dataclass
class RunState:
    """What the hot path needs of a run; a process keeps these for running runs."""

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

    @classmethod
    def of(cls, row: Any) -> RunState:
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


def load_run_states(conn: Connection, run_ids: Sequence[str]) -> dict[str, RunState]:
    """The named runs with their histories: two queries for up to 500 runs."""
    states = {
        r.run_id: RunState.of(r) for r in conn.execute(_RUN_STATES, {"run_ids": list(run_ids)})
    }
    histories = histories_of(conn, [s.pk for s in states.values()])
    for state in states.values():
        state.history = histories[state.pk]
    return states


def histories_of(conn: Session | Connection, run_pks: Sequence[int]) -> dict[int, list[HistoryRow]]:
    """The stored histories of these runs, each in epoch order; one query per 500 runs, each
    a walk of the checkpoints' primary key."""
    out: dict[int, list[HistoryRow]] = {pk: [] for pk in run_pks}
    for start in range(0, len(run_pks), 500):
        chunk = list(run_pks[start : start + 500])
        for row in conn.execute(_HISTORIES, {"run_pks": chunk}):
            out[row[0]].append((row[1], row[2], row[3], row[4]))
    return out


def study_pk_of(conn: Connection, study_id: str) -> int:
    """The study's key, creating the study with the default policy if it does not exist."""
    pk = conn.execute(_STUDY_PK, {"b_study_id": study_id}).scalar()
    if pk is None:
        now = utcnow()
        conn.execute(
            _NEW_STUDY[conn.dialect.name],
            {
                "study_id": study_id,
                "description": None,
                "policy": StudyPolicy().model_dump(mode="json"),
                "reference_runs": 0,
                "created_at": now,
                "updated_at": now,
            },
        )
        pk = conn.execute(_STUDY_PK, {"b_study_id": study_id}).scalar_one()
    return int(pk)


def study_id_of(conn: Connection, study_pk: int) -> str:
    query = select(_studies.c.study_id).where(_studies.c.pk == study_pk)
    return str(conn.execute(query).scalar_one())


def insert_new_runs(
    conn: Connection, starts: Sequence[tuple[str, int, RunSpec]]
) -> dict[str, RunState]:
    """Insert the runs (id, study key, spec) whose ids are free, in one statement; the states
    of those inserted. An id that exists is left out: a retry or a conflict, for create_run."""
    if not starts:
        return {}
    now = utcnow()
    rows = [
        _start_row(run_id, study_pk, spec)
        | {"status": "running", "n_checkpoints": 0, "created_at": now}
        for run_id, study_pk, spec in starts
    ]
    if conn.dialect.name == "sqlite":
        return _driver_new_runs(conn, rows)
    return {row.run_id: RunState.of(row) for row in conn.execute(_NEW_RUNS["postgresql"], rows)}


def _driver_new_runs(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, RunState]:
    """SQLite: `insert_new_runs` a row at a time on the driver's connection (the batch's
    starts are a few; SQLAlchemy's executemany with RETURNING cost ~70 µs a run), with the
    columns' own bind and result processing, so a state reads as SQLAlchemy would read it."""
    sql, bound, read = _driver_new_run_statement(conn.dialect)
    states = {}
    for row in rows:
        args = tuple([row[name] if bind is None else bind(row[name]) for name, bind in bound])
        for returned in driver_execute(conn, sql, args):
            fields = {
                name: value if process is None else process(value)
                for (name, process), value in zip(read, returned, strict=True)
            }
            states[fields["run_id"]] = RunState(**fields)
    return states


_Processors = tuple[tuple[str, Callable[[Any], Any] | None], ...]
_DRIVER_NEW_RUNS: dict[tuple[str, str], tuple[str, _Processors, _Processors]] = {}


def _driver_new_run_statement(dialect: Dialect) -> tuple[str, _Processors, _Processors]:
    """The new-run INSERT as driver SQL (positional parameters), each parameter's bind
    processor in order, and each returned column's result processor (RunState's fields)."""
    key = (dialect.name, dialect.paramstyle)
    found = _DRIVER_NEW_RUNS.get(key)
    if found is None:
        names = [
            *("run_id", "study_pk", "max_epochs", "config", "dataset"),
            *("status", "n_checkpoints", "created_at"),
        ]
        statement = (
            sqlite.insert(_runs)
            .values({name: bindparam(name) for name in names})
            .on_conflict_do_nothing(index_elements=["run_id"])
            .returning(*_STATE_COLUMNS)
        )
        sql, positions = _positional(statement, dialect)
        bound = tuple((name, _bind_processor(_runs.c[name], dialect)) for name in positions)
        read = tuple(
            (c.name, c.type.dialect_impl(dialect).result_processor(dialect, None))
            for c in _STATE_COLUMNS
        )
        found = _DRIVER_NEW_RUNS[key] = (sql, bound, read)
    return found


def advance_runs(conn: Connection, moves: Sequence[tuple[RunState, int]]) -> set[int]:
    """Move each run's last epoch from what its state says to the new epoch, in one statement;
    the keys of the runs that moved (the others moved on elsewhere, or ended)."""
    rows = [
        {"pk": state.pk, "from": _guard_epoch(state.last_epoch), "to": epoch}
        for state, epoch in moves
    ]
    return _execute_values(conn, "advance", rows)


def finish_runs(
    conn: Connection, ends: Sequence[tuple[RunState, str, Metrics]], finished_at: datetime
) -> set[int]:
    """End running runs (state, status, finals) in one statement; the keys of those ended
    (the others ended or moved on elsewhere). Runs completed at max_epochs join their study's
    reference set, numbered in this order, as finish_run does."""
    rows = [_end_row(state, status, final) for state, status, final in ends]
    ended = _execute_values(conn, "finish", rows, finished_at=finished_at)
    joining: dict[int, list[int]] = {}
    for state, status, _ in ends:
        if state.pk in ended and joins_reference(status, state.last_epoch, state.max_epochs):
            joining.setdefault(state.study_pk, []).append(state.pk)
    seqs = []
    for study_pk, pks in sorted(joining.items()):  # one lock order for concurrent writers
        params = {"b_study_pk": study_pk, "b_joining": len(pks)}
        ((top,),) = _run_small(conn, _JOIN_REFERENCE, params)
        seqs += [{"b_pk": pk, "b_seq": top - len(pks) + 1 + n} for n, pk in enumerate(pks)]
    if seqs:
        _run_small(conn, _SET_REFERENCE_SEQ, seqs)
    return ended


def _run_small(conn: Connection, statement: Any, params: Any) -> list[Any]:
    """A statement of integers only (no bind or result processing), for many parameter sets
    if `params` is a list: on SQLite on the driver's connection (`db.driver_execute`), else
    through SQLAlchemy. Its rows."""
    if conn.dialect.name != "sqlite":
        result = conn.execute(statement, params)
        return list(result) if result.returns_rows else []
    key = (id(statement), conn.dialect.name, conn.dialect.paramstyle)
    compiled = _SMALL.get(key)
    if compiled is None:
        compiled = _SMALL[key] = _positional(statement, conn.dialect)
    sql, positions = compiled
    if isinstance(params, list):
        many = [tuple(p[name] for name in positions) for p in params]
        return driver_execute(conn, sql, many, many=True)
    return driver_execute(conn, sql, tuple(params[name] for name in positions))


_SMALL: dict[tuple[int, str, str], tuple[str, tuple[str, ...]]] = {}


def insert_checkpoint_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert checkpoint rows (each with its decision and run_pk) in one executemany.

    On SQLite the rows go to the driver as tuples, bound here by the columns' own bind
    processors: SQLAlchemy's executemany processes each of a row's 20 values in Python, which
    cost 4% of the writer's time under the 64-worker replay (py-spy). Postgres stores its
    checkpoints in one statement (`store_checkpoints`) and takes this path only rarely.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(_INSERT_CHECKPOINTS, rows)
        return
    sql, bound = _driver_insert(conn.dialect)
    # The rows of a batch share one received_at, the batch's time; formatting it for SQLite
    # cost 2.3 µs a row.
    bound = tuple(
        (name, _last_kept(bind) if name == "received_at" and bind is not None else bind)
        for name, bind in bound
    )
    driver_execute(
        conn,
        sql,
        [
            tuple([row[name] if bind is None else bind(row[name]) for name, bind in bound])
            for row in rows
        ],
        many=True,
    )


def _last_kept(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`process`, answering again without calling it when given the same object again."""
    last: list[Any] = [object(), None]

    def processed(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, process(value)
        return last[1]

    return processed


_DRIVER_INSERTS: dict[tuple[str, str], tuple[str, tuple[tuple[str, Any], ...]]] = {}


def _driver_insert(dialect: Dialect) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The checkpoint INSERT as the driver's SQL with positional parameters, and each
    column's name and bind processor (None: the value goes as it is), in parameter order."""
    key = (dialect.name, dialect.paramstyle)
    found = _DRIVER_INSERTS.get(key)
    if found is None:
        names = [c.name for c in _checkpoints.columns]
        statement = _checkpoints.insert().values({name: bindparam(name) for name in names})
        sql, positions = _positional(statement, dialect)
        bound = tuple((name, _bind_processor(_checkpoints.c[name], dialect)) for name in positions)
        found = _DRIVER_INSERTS[key] = (sql, bound)
    return found


def store_checkpoints(
    conn: Connection, checkpoints: Sequence[tuple[RunState, dict[str, Any]]]
) -> set[int]:
    """Store each run's next checkpoint row (with its decision; `epoch` is the run's new last
    epoch): the run advances by compare-and-swap on its last epoch, and its row is inserted
    only if it did. The keys of the runs stored (the others moved on elsewhere, or ended).

    On Postgres this is one statement (the UPDATE as a data-modifying CTE feeding the INSERT);
    SQLite has no such CTE, and takes the UPDATE and then the INSERT.
    """
    if not checkpoints:
        return set()
    if conn.dialect.name == "postgresql":
        rows = [_checkpoint_row(state, row) for state, row in checkpoints]
        return _execute_values(conn, "checkpoint", rows)
    moved = advance_runs(conn, [(state, row["epoch"]) for state, row in checkpoints])
    insert_checkpoint_rows(
        conn, [row | {"run_pk": state.pk} for state, row in checkpoints if state.pk in moved]
    )
    return moved


@dataclass
class BatchWritten:
    """What `write_batch` stored: the runs started (their states), and the keys of the runs
    ended and of the runs whose checkpoint was stored."""

    started: dict[str, RunState]
    ended: set[int]
    stored: set[int]


def write_batch(
    conn: Connection,
    starts: Sequence[tuple[str, int, RunSpec]],
    ends: Sequence[tuple[RunState, str, Metrics]],
    checkpoints: Sequence[tuple[RunState, dict[str, Any]]],
    now: datetime,
) -> BatchWritten:
    """Start, end and advance runs in ONE statement (Postgres): `insert_new_runs`,
    `finish_runs` and `store_checkpoints` as data-modifying CTEs over JSON rows.

    One statement is atomic on its own, so the writer runs it outside a transaction block: a
    batch costs one round trip, not BEGIN, three to five statements and COMMIT. The rules are
    those of the three functions (compare-and-swap on each run's last epoch; ids taken left
    out). One difference: a run that completes at max_epochs is numbered into its study's
    reference set before its compare-and-swap is known (the numbers come from the same
    statement's update of the study), so a run whose view was stale leaves its number unused.
    Readers of the reference set look for numbers above the last they saw, and take a gap as
    they take any other (ReferenceCache).
    """
    if conn.dialect.name != "postgresql":
        raise ValueError("write_batch is Postgres's: SQLite has no data-modifying CTEs")
    start_rows = [_start_row(run_id, study_pk, spec) for run_id, study_pk, spec in starts]
    end_rows = [
        _end_row(state, status, final)
        | {
            "study_pk": state.study_pk,
            "joins": joins_reference(status, state.last_epoch, state.max_epochs),
            "ord": n,
        }
        for n, (state, status, final) in enumerate(ends)
    ]
    checkpoint_rows = [_checkpoint_row(state, row) for state, row in checkpoints]
    params = {
        "starts": _json_rows(start_rows),
        "ends": _json_rows(end_rows),
        "checkpoints": _json_rows(checkpoint_rows),
        "now": now,
    }
    written = BatchWritten({}, set(), set())
    for row in conn.execute(_WRITE_BATCH, params):
        if row.kind == "start":
            written.started[row.run_id] = RunState.of(row)
        elif row.kind == "end":
            written.ended.add(row.pk)
        else:
            written.stored.add(row.pk)
    return written


def _json_rows(rows: list[dict[str, Any]]) -> str:
    """Rows as one JSON parameter. orjson writes them ~15x faster than json (0.9 against
    15 µs a checkpoint row: a float's shortest repr, above all), which was 2% of the server's
    time on Postgres. It refuses an integer beyond 64 bits, which a run's free-form config
    may hold: such a batch goes through json. No row holds NaN (non-finite metrics are NULL,
    configs with one are refused): json would refuse one; orjson would write null."""
    try:
        return orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except orjson.JSONEncodeError:
        return json.dumps(rows, default=_json_value, allow_nan=False)


def _write_batch_statement() -> Any:
    """The statement of `write_batch`, written from the tables' own columns and types."""
    pg = postgresql.dialect()

    def typed(names: dict[str, Any]) -> str:
        return ", ".join(f'"{n}" {sql_type.compile(dialect=pg)}' for n, sql_type in names.items())

    fields = _CHECKPOINT_FIELDS
    checkpoint_types = {
        "pk": Integer(),
        "from": Integer(),
        **{n: _value_type(_checkpoints.c[n]) for n in fields},
    }
    # RETURNING of every branch has the columns of a run's state (RunState.of), kind first.
    state = [c.name for c in _STATE_COLUMNS]
    nulls = ", ".join(f"NULL AS {n}" for n in state if n != "pk")
    sql = f"""
WITH s AS (
    SELECT * FROM json_to_recordset(CAST(:starts AS json))
        AS u(run_id TEXT, study_pk INTEGER, max_epochs INTEGER, config JSON, dataset TEXT)
), started AS (
    INSERT INTO runs (run_id, study_pk, max_epochs, config, dataset, status, n_checkpoints,
                      created_at)
    SELECT run_id, study_pk, max_epochs, config, dataset, 'running', 0, :now FROM s
    ON CONFLICT (run_id) DO NOTHING
    RETURNING {", ".join(state)}
), e AS (
    SELECT * FROM json_to_recordset(CAST(:ends AS json))
        AS u(pk INTEGER, "from" INTEGER, status TEXT, mqe FLOAT, te FLOAT, dead FLOAT,
             study_pk INTEGER, joins BOOLEAN, ord INTEGER)
), joined AS (
    UPDATE studies SET reference_runs = studies.reference_runs + j.n
    FROM (SELECT study_pk, count(*) AS n FROM e WHERE joins GROUP BY study_pk) AS j
    WHERE studies.pk = j.study_pk
    RETURNING studies.pk, studies.reference_runs - j.n AS before
), numbered AS (
    SELECT e.*, CASE WHEN e.joins THEN joined.before
        + row_number() OVER (PARTITION BY e.study_pk, e.joins ORDER BY e.ord) END AS seq
    FROM e LEFT JOIN joined ON joined.pk = e.study_pk
), ended AS (
    UPDATE runs SET status = n.status, final_mqe = n.mqe, final_topographic_error = n.te,
        final_dead_neuron_ratio = n.dead, finished_at = :now, reference_seq = n.seq
    FROM numbered AS n
    WHERE runs.pk = n.pk AND runs.status = 'running' AND coalesce(runs.last_epoch, -1) = n."from"
    RETURNING runs.pk
), c AS (
    SELECT * FROM json_to_recordset(CAST(:checkpoints AS json)) AS u({typed(checkpoint_types)})
), moved AS (
    UPDATE runs SET last_epoch = c.epoch, n_checkpoints = runs.n_checkpoints + 1
    FROM c
    WHERE runs.pk = c.pk AND runs.status = 'running' AND coalesce(runs.last_epoch, -1) = c."from"
    RETURNING runs.pk
), stored AS (
    INSERT INTO checkpoints (run_pk, {", ".join(fields)})
    SELECT c.pk, {", ".join(f"c.{n}" for n in fields)} FROM c JOIN moved ON moved.pk = c.pk
    RETURNING run_pk
)
SELECT 'start' AS kind, {", ".join(state)} FROM started
UNION ALL SELECT 'end', pk, {nulls} FROM ended
UNION ALL SELECT 'checkpoint', run_pk, {nulls} FROM stored
"""
    return text(sql).columns(column("kind", String), *_STATE_COLUMNS)


def _start_row(run_id: str, study_pk: int, spec: RunSpec) -> dict[str, Any]:
    """A new run's values as its start gives them (both insert paths add the same state)."""
    return {
        "run_id": run_id,
        "study_pk": study_pk,
        "max_epochs": spec.max_epochs,
        "config": spec.config,
        "dataset": spec.dataset,
    }


def _end_row(state: RunState, status: str, final: Metrics) -> dict[str, Any]:
    """A finish's values for the guarded UPDATE (the "finish" kind of `_VALUE_COLUMNS`)."""
    return {
        "pk": state.pk,
        "from": _guard_epoch(state.last_epoch),
        "status": status,
        "mqe": final.mqe,
        "te": final.topographic_error,
        "dead": final.dead_neuron_ratio,
    }


def _checkpoint_row(state: RunState, row: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's values with its run's guard (the "checkpoint" kind)."""
    return {"pk": state.pk, "from": _guard_epoch(state.last_epoch)} | {
        name: row[name] for name in _CHECKPOINT_FIELDS
    }


def _guard_epoch(epoch: int | None) -> int:
    # -1 stands for "no checkpoint yet" (epochs start at 0), so the guard is a plain "=".
    return -1 if epoch is None else epoch


# --- one statement for many runs: UPDATE runs ... FROM <the rows> RETURNING pk ----------------
# On Postgres the rows come as one JSON parameter (`json_to_recordset`): one short statement
# for every batch size, cached by SQLAlchemy and prepared by Postgres once, and a parameter
# that the C encoder writes (psycopg dumps a list element by element in Python, and a long
# VALUES list is more SQL than psycopg caches: both cost more than the statement). SQLite
# takes the rows as a VALUES list, which SQLAlchemy does not cache (it has no cache key) and
# which cost more to compile per batch than to run; so each (kind, size) is compiled once,
# here, and run as driver SQL, its parameters (ints, floats, short strings, one timestamp)
# bound here.


def _value_type(col: Any) -> Any:
    # A cast to VARCHAR(n) would cut a longer string short: the column's own type checks it.
    if isinstance(col.type, String):
        return Text()
    return DateTime(timezone=True) if isinstance(col.type, TypeDecorator) else col.type


_GUARD_COLUMNS = {"pk": Integer, "from": Integer}
# A checkpoint row's columns but its run's key (the guard's "pk"); "epoch" is the new last epoch.
_CHECKPOINT_FIELDS = tuple(c.name for c in _checkpoints.columns if c.name != "run_pk")
_VALUE_COLUMNS: dict[str, dict[str, Any]] = {
    "advance": {**_GUARD_COLUMNS, "to": Integer},
    "finish": {**_GUARD_COLUMNS, "status": String, "mqe": Float, "te": Float, "dead": Float},
    "checkpoint": {
        **_GUARD_COLUMNS,
        **{n: _value_type(_checkpoints.c[n]) for n in _CHECKPOINT_FIELDS},
    },
}


def _execute_values(
    conn: Connection, kind: str, rows: list[dict[str, Any]], **shared: Any
) -> set[int]:
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        params = {f"b_{name}": value for name, value in shared.items()}
        params["b_rows"] = _json_rows(rows)
        return {int(pk) for pk in conn.execute(_RECORDSETS[kind], params).scalars()}
    # Padded to a power of two with rows that match no run (no key is negative): a handful of
    # statement shapes, compiled once each, not one per batch size.
    size = 1 << (len(rows) - 1).bit_length()
    padding = {name: None for name in _VALUE_COLUMNS[kind]} | {"pk": -1}
    sql, positions, defaults = _compiled_values(conn.dialect, kind, size)
    params = dict(defaults)
    for n, row in enumerate(rows + [padding] * (size - len(rows))):
        for name, value in row.items():
            params[f"r{n}_{name}"] = value
    if "finished_at" in shared:
        process = _bind_processor(_runs.c.finished_at, conn.dialect)
        value = shared["finished_at"]
        params["b_finished_at"] = process(value) if process is not None else value
    args = tuple(params[name] for name in positions) if positions is not None else params
    return {int(pk) for (pk,) in driver_execute(conn, sql, args)}


# The most rows one batch statement takes (the writer's batch cap), a power of two.
MAX_BATCH_ROWS = 256


def compile_batch_statements(dialect: Dialect) -> None:
    """Compile every shape of the batch statements now (SQLite: 1-46 ms each, 150 ms in all
    on a slow box), not at the first batch of each size, where it delays that batch's answers."""
    if dialect.name == "postgresql":
        return
    for kind in _VALUE_COLUMNS:
        if kind == "checkpoint":
            continue
        for bits in range(MAX_BATCH_ROWS.bit_length()):
            _compiled_values(dialect, kind, 1 << bits)


_Compiled = tuple[str, tuple[str, ...] | None, dict[str, Any]]
# Keyed by the SQL a dialect writes, not by the dialect object: every engine of a process (and
# of a test run, which opens many) shares one compilation of each shape. Bounded: the kinds
# times the powers of two up to MAX_BATCH_ROWS.
_COMPILED_VALUES: dict[tuple[str, str, str, int], _Compiled] = {}


def _compiled_values(dialect: Dialect, kind: str, n: int) -> _Compiled:
    key = (dialect.name, dialect.paramstyle, kind, n)
    compiled = _COMPILED_VALUES.get(key)
    if compiled is None:  # two threads may both compile it: the same result, stored twice
        compiled = _COMPILED_VALUES[key] = _compile_values(dialect, kind, n)
    return compiled


def _compile_values(dialect: Dialect, kind: str, n: int) -> _Compiled:
    return _compile(_values_statement(kind, n), dialect)


def _compile(statement: Any, dialect: Dialect) -> _Compiled:
    """The driver's SQL of `statement`, its parameter names in order (None for a dialect of
    named parameters), and their defaults."""
    compiled = statement.compile(dialect=dialect)
    positional = compiled.positional and compiled.positiontup is not None
    positions = tuple(compiled.positiontup or ()) if positional else None
    return compiled.string, positions, dict(compiled.params)


def _positional(statement: Any, dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """`statement` as the driver's SQL with positional parameters, and their names in order
    (the driver-level paths bind by position)."""
    sql, positions, _ = _compile(statement, dialect)
    if positions is None:
        raise RuntimeError(f"{dialect.name} does not take positional parameters")
    return sql, positions


def _bind_processor(column: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """What SQLAlchemy does to a value of `column` before the driver gets it, if anything."""
    processor: Callable[[Any], Any] | None = column.type.dialect_impl(dialect).bind_processor(
        dialect
    )
    return processor


def _values_statement(kind: str, n: int) -> Any:
    names = _VALUE_COLUMNS[kind]
    rows = (
        values(*(column(f"v_{name}", type_) for name, type_ in names.items()), name="v")
        .data(
            [
                # typed: Postgres cannot guess the type of a column whose values are NULL
                tuple(sql_cast(bindparam(f"r{i}_{name}"), type_) for name, type_ in names.items())
                for i in range(n)
            ]
        )
        .cte("v")  # WITH v(...) AS (VALUES ...): SQLite has no column list on a VALUES alias
    )
    return _guarded_statement(kind, rows)


def _recordset_statement(kind: str) -> Any:
    names = _VALUE_COLUMNS[kind]
    rows = (
        func.json_to_recordset(sql_cast(bindparam("b_rows", type_=Text()), JSON))
        .table_valued(*(column(name, type_) for name, type_ in names.items()))
        .render_derived(name="u", with_types=True)
    )
    return _guarded_statement(
        kind, select(*(rows.c[name].label(f"v_{name}") for name in names)).cte("v")
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a row value")


def _guarded_statement(kind: str, rows: Any) -> Any:
    """The compare-and-swap of `kind` over `rows` (a CTE with a `v_<name>` column per value)."""
    guarded = update(_runs).where(
        _runs.c.pk == rows.c.v_pk,
        _runs.c.status == "running",
        func.coalesce(_runs.c.last_epoch, -1) == rows.c.v_from,
    )
    if kind == "checkpoint":  # Postgres: the guarded UPDATE feeds the INSERT
        moved = (
            guarded.values(last_epoch=rows.c.v_epoch, n_checkpoints=_runs.c.n_checkpoints + 1)
            .returning(_runs.c.pk)
            .cte("moved")
        )
        stored = select(rows.c.v_pk, *(rows.c[f"v_{name}"] for name in _CHECKPOINT_FIELDS))
        return (
            insert(_checkpoints)
            .from_select(
                ["run_pk", *_CHECKPOINT_FIELDS],
                stored.join_from(rows, moved, moved.c.pk == rows.c.v_pk),
            )
            .returning(_checkpoints.c.run_pk)
        )
    if kind == "advance":
        guarded = guarded.values(last_epoch=rows.c.v_to, n_checkpoints=_runs.c.n_checkpoints + 1)
    else:
        guarded = guarded.values(
            status=rows.c.v_status,
            final_mqe=rows.c.v_mqe,
            final_topographic_error=rows.c.v_te,
            final_dead_neuron_ratio=rows.c.v_dead,
            finished_at=bindparam("b_finished_at"),
        )
    return guarded.returning(_runs.c.pk)


# Postgres's statements; only these have "checkpoint" (SQLite has no data-modifying CTE).
_RECORDSETS = {kind: _recordset_statement(kind) for kind in _VALUE_COLUMNS}
_WRITE_BATCH = _write_batch_statement()
