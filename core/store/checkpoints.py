"""Checkpoints: a run's history, each point stored with the decision it was answered with, and
the run advanced to it in the same transaction."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from core.errors import Conflict
from core.reference import HistoryRow
from core.tables import Checkpoint, Run

_runs = cast(Table, Run.__table__)
_checkpoints = cast(Table, Checkpoint.__table__)


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


def find_checkpoint(session: Session, run_pk: int, epoch: int) -> Checkpoint | None:
    return session.get(Checkpoint, (run_pk, epoch))


def checkpoints_of(session: Session, run_pk: int) -> Sequence[Checkpoint]:
    return session.scalars(
        select(Checkpoint).where(Checkpoint.run_pk == run_pk).order_by(Checkpoint.epoch)
    ).all()


def history_of(session: Session, run_pk: int) -> list[HistoryRow]:
    """(epoch, mqe, te, dead) of a run's stored checkpoints, in epoch order."""
    return histories_of(session, [run_pk])[run_pk]


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


def histories_of(conn: Session | Connection, run_pks: Sequence[int]) -> dict[int, list[HistoryRow]]:
    """The stored histories of these runs, each in epoch order; one query per 500 runs, each
    a walk of the checkpoints' primary key."""
    out: dict[int, list[HistoryRow]] = {pk: [] for pk in run_pks}
    for start in range(0, len(run_pks), 500):
        chunk = list(run_pks[start : start + 500])
        for row in conn.execute(_HISTORIES, {"run_pks": chunk}):
            out[row[0]].append((row[1], row[2], row[3], row[4]))
    return out


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


# The columns of a checkpoint row that its writer gives (the run's key comes separately).
CHECKPOINT_FIELDS = tuple(c.name for c in _checkpoints.columns if c.name != "run_pk")
_ADVANCE = (
    update(_runs)
    .where(_runs.c.pk == bindparam("b_pk"))
    .values(last_epoch=bindparam("b_epoch"), n_checkpoints=_runs.c.n_checkpoints + 1)
)
_INSERT = insert(_checkpoints)


def add_checkpoints(conn: Connection, rows: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Store each run's next checkpoint (run key, row with its decision) and advance the run
    to it: two executemany statements for any number of runs, one row per run.

    The caller holds each run's row lock and has checked that its epoch is above the run's last
    (the writer's batch: core.store.batch; one checkpoint: `insert_checkpoint`).
    """
    if not rows:
        return
    conn.execute(_ADVANCE, [{"b_pk": pk, "b_epoch": row["epoch"]} for pk, row in rows])
    conn.execute(_INSERT, [row | {"run_pk": pk} for pk, row in rows])


def insert_checkpoint(session: Session, run: Run, row: dict[str, Any]) -> None:
    """Store one checkpoint with its decision and advance the run, in the session's
    transaction. The caller read `run` with its lock (get_run(..., for_update=True)) and
    checked it can take the epoch (ensure_can_record)."""
    add_checkpoints(session.connection(), [(run.pk, row)])


_SET_HISTORY = (
    update(_runs)
    .where(_runs.c.pk == bindparam("b_pk"))
    .values(last_epoch=bindparam("b_epoch"), n_checkpoints=bindparam("b_n"))
)


def insert_history(session: Session, run: Run, rows: Sequence[dict[str, Any]]) -> None:
    """All checkpoints of a run that has none yet, in one executemany, and the run advanced to
    its last (an import: a run created in this transaction, which nobody else sees yet)."""
    if not rows:
        return
    conn = session.connection()
    conn.execute(_INSERT, [row | {"run_pk": run.pk} for row in rows])
    conn.execute(_SET_HISTORY, {"b_pk": run.pk, "b_epoch": rows[-1]["epoch"], "b_n": len(rows)})
    session.expire(run, ["last_epoch", "n_checkpoints"])
