"""Reads and writes of studies, runs and checkpoints. Takes a session, flushes, never commits."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Integer,
    Table,
    bindparam,
    column,
    func,
    select,
    update,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oracle.core.errors import Conflict, NotFound
from oracle.core.reference import HistoryRow
from oracle.core.scoring import StudyPolicy
from oracle.core.tables import Checkpoint, Run, Study, utcnow

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


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


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
    now = utcnow()
    session.execute(
        _insert(session)(Study)
        .values(
            study_id=study_id,
            description=None,
            policy=StudyPolicy().model_dump(mode="json"),
            reference_runs=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["study_id"])
    )
    return get_study(session, study_id)


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
    if status == "completed" and run.last_epoch == run.max_epochs:
        # Completed at max_epochs: the run joins its study's reference set (median rule,
        # percentile thresholds) and becomes training data.
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
    session: Session | Connection, study_pk: int, after_seq: int
) -> list[tuple[int, int, list[tuple[int, float | None, float | None, float | None]], Metrics]]:
    """Reference runs of a study that joined after `after_seq`, with their histories.

    Walks the (study_pk, reference_seq) index and the checkpoints' primary key: the cost is
    the new runs only, never a scan of the study.
    """
    runs = session.execute(
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
    ).all()
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
# Pre-built Core statements on the tables (no ORM unit of work): compiled once, cached by
# SQLAlchemy, cheap per call. They run on a Connection inside the caller's transaction.

_runs = cast(Table, Run.__table__)
_checkpoints = cast(Table, Checkpoint.__table__)

_RUN_STATES = select(
    _runs.c.pk,
    _runs.c.run_id,
    _runs.c.study_pk,
    _runs.c.max_epochs,
    _runs.c.status,
    _runs.c.last_epoch,
).where(_runs.c.run_id.in_(bindparam("run_ids", expanding=True)))

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


@dataclass
class RunState:
    """What the hot path needs of a running run; a process keeps these between checkpoints."""

    pk: int
    run_id: str
    study_pk: int
    max_epochs: int
    status: str
    last_epoch: int | None
    history: list[HistoryRow]


def load_run_states(conn: Connection, run_ids: Sequence[str]) -> dict[str, RunState]:
    """The named runs with their histories: two queries for up to 500 runs."""
    states = {
        r.run_id: RunState(r.pk, r.run_id, r.study_pk, r.max_epochs, r.status, r.last_epoch, [])
        for r in conn.execute(_RUN_STATES, {"run_ids": list(run_ids)})
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


def advance_runs(conn: Connection, moves: Sequence[tuple[RunState, int]]) -> set[int]:
    """Move each run's last epoch from what its state says to the new epoch, in one statement;
    returns the keys of the runs that moved (the others moved on elsewhere, or ended).

    A compare-and-swap on the run rows: a run advances only if nobody else (another process,
    another replica) stored a checkpoint or ended it since this process last looked.
    """
    if not moves:
        return set()
    params: dict[str, int] = {}
    for n, (state, epoch) in enumerate(moves):
        # -1 stands for "no checkpoint yet" (epochs start at 0), so the guard is a plain =.
        params[f"pk_{n}"] = state.pk
        params[f"from_{n}"] = -1 if state.last_epoch is None else state.last_epoch
        params[f"to_{n}"] = epoch
    sql, positions, defaults = _advance_sql(conn.dialect, len(moves))
    params = {**defaults, **params}
    args = tuple(params[name] for name in positions) if positions is not None else params
    return {int(pk) for pk in conn.exec_driver_sql(sql, args).scalars()}


@functools.lru_cache(maxsize=1024)
def _advance_sql(dialect: Dialect, n: int) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
    """The compiled advance statement for `n` runs. SQLAlchemy does not cache statements with
    a VALUES list (they have no cache key), and compiling one per batch cost more than the
    statement itself: so each size is compiled once, here."""
    compiled = _advance_statement(n).compile(dialect=dialect)
    positional = compiled.positional and compiled.positiontup is not None
    positions = tuple(compiled.positiontup or ()) if positional else None
    return compiled.string, positions, dict(compiled.params)


def _advance_statement(n: int) -> Any:
    """WITH moves(pk, from, to) AS (VALUES ... n rows) UPDATE runs ... FROM moves RETURNING pk."""
    moving = (
        values(
            column("m_pk", Integer),
            column("m_from", Integer),
            column("m_to", Integer),
            name="moves",
        )
        .data(
            [(bindparam(f"pk_{i}"), bindparam(f"from_{i}"), bindparam(f"to_{i}")) for i in range(n)]
        )
        .cte("moves")  # a CTE: SQLite has no column list on a VALUES alias
    )
    return (
        update(_runs)
        .where(
            _runs.c.pk == moving.c.m_pk,
            _runs.c.status == "running",
            func.coalesce(_runs.c.last_epoch, -1) == moving.c.m_from,
        )
        .values(last_epoch=moving.c.m_to, n_checkpoints=_runs.c.n_checkpoints + 1)
        .returning(_runs.c.pk)
    )


def insert_checkpoint_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert checkpoint rows (each with its decision and run_pk) in one executemany."""
    if rows:
        conn.execute(_INSERT_CHECKPOINTS, rows)


# --- starting and finishing runs on the hot path ---------------------------------------------
# What the ORM versions above do for the common case (a new run id; a running run ended by its
# worker), in one or two Core statements. Anything else (a retried PUT, a different body, a
# run already ended or moved on elsewhere) returns None, and the caller takes the ORM path,
# which knows every rule.

_studies = cast(Table, Study.__table__)
RUN_COLUMNS = (
    _runs.c.pk,
    _runs.c.run_id,
    _runs.c.study_pk,
    _runs.c.max_epochs,
    _runs.c.config,
    _runs.c.dataset,
    _runs.c.status,
    _runs.c.last_epoch,
    _runs.c.n_checkpoints,
    _runs.c.final_mqe,
    _runs.c.final_topographic_error,
    _runs.c.final_dead_neuron_ratio,
    _runs.c.created_at,
    _runs.c.finished_at,
)
_STUDY_PK = select(_studies.c.pk).where(_studies.c.study_id == bindparam("b_study_id"))
_DIALECTS = {"sqlite": sqlite, "postgresql": postgresql}
_NEW_STUDY = {
    name: dialect.insert(_studies).on_conflict_do_nothing(index_elements=["study_id"])
    for name, dialect in _DIALECTS.items()
}
_NEW_RUN = {
    name: dialect.insert(_runs)
    .on_conflict_do_nothing(index_elements=["run_id"])
    .returning(*RUN_COLUMNS)
    for name, dialect in _DIALECTS.items()
}
_FINISH_FROM, _FINISH_FIRST = (
    update(_runs)
    .where(_runs.c.pk == bindparam("b_pk"), _runs.c.status == "running", guard)
    .values(
        status=bindparam("b_status"),
        final_mqe=bindparam("b_mqe"),
        final_topographic_error=bindparam("b_te"),
        final_dead_neuron_ratio=bindparam("b_dead"),
        finished_at=bindparam("b_now"),
    )
    .returning(*RUN_COLUMNS)
    for guard in (
        _runs.c.last_epoch == bindparam("b_expected"),
        _runs.c.last_epoch.is_(None),
    )
)
_JOIN_REFERENCE = (
    update(_studies)
    .where(_studies.c.pk == bindparam("b_study_pk"))
    .values(reference_runs=_studies.c.reference_runs + 1)
    .returning(_studies.c.reference_runs)
)
_SET_REFERENCE_SEQ = (
    update(_runs).where(_runs.c.pk == bindparam("b_pk")).values(reference_seq=bindparam("b_seq"))
)


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
    return str(
        conn.execute(select(_studies.c.study_id).where(_studies.c.pk == study_pk)).scalar_one()
    )


def insert_new_run(conn: Connection, run_id: str, study_pk: int, spec: RunSpec) -> Any | None:
    """Insert the run unless its id exists; the stored row, or None if the id was taken."""
    return conn.execute(
        _NEW_RUN[conn.dialect.name],
        {
            "run_id": run_id,
            "study_pk": study_pk,
            "max_epochs": spec.max_epochs,
            "config": spec.config,
            "dataset": spec.dataset,
            "status": "running",
            "n_checkpoints": 0,
            "created_at": utcnow(),
        },
    ).first()


def finish_running(conn: Connection, state: RunState, status: str, final: Metrics | None) -> Any:
    """End a run that `state` says is running at its last epoch; the ended row, or None if the
    run is not (or no longer) in that state. `final` None: the last checkpoint's values."""
    if status not in FINISHED_STATUSES:
        return None
    if final is None:
        final = Metrics(*state.history[-1][1:]) if state.history else Metrics(None, None, None)
    params = {
        "b_pk": state.pk,
        "b_status": status,
        "b_mqe": final.mqe,
        "b_te": final.topographic_error,
        "b_dead": final.dead_neuron_ratio,
        "b_now": utcnow(),
    }
    if state.last_epoch is None:
        row = conn.execute(_FINISH_FIRST, params).first()
    else:
        row = conn.execute(_FINISH_FROM, {**params, "b_expected": state.last_epoch}).first()
    if row is not None and status == "completed" and row.last_epoch == row.max_epochs:
        # Completed at max_epochs: the run joins its study's reference set (see finish_run).
        seq = conn.execute(_JOIN_REFERENCE, {"b_study_pk": state.study_pk}).scalar_one()
        conn.execute(_SET_REFERENCE_SEQ, {"b_pk": state.pk, "b_seq": seq})
    return row
