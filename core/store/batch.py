"""The writer's batch: the starts, finishes and checkpoints of many runs in one transaction and
a few statements, each run written only if the writer's view of it is current."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from core.store.checkpoints import Metrics, add_checkpoints
from core.store.runs import RunSpec, RunState, end_runs, insert_new_runs, lock_runs
from core.tables import utcnow


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
    """Start runs (id, study key, spec), end runs (state, status, finals) and store each run's
    next checkpoint (state, row with its decision; `epoch` is the run's new last epoch), in
    the caller's transaction.

    A process keeps its running runs' states between batches, and another replica (or the
    one-at-a-time path) may have moved a run on meanwhile: the rows of the runs to end or
    advance are locked and read first, and a run whose state is not the stored one is left
    out (the caller reloads it and decides again). An id that is taken is left out of the
    starts (a retry, or a conflict). Statements: the starts' INSERT, the lock, the
    reference numbers of the runs that complete at max_epochs (one UPDATE per study), the
    finishes' UPDATE, and the checkpoints' UPDATE and INSERT, each one for the whole batch.
    """
    started = insert_new_runs(conn, starts, now)
    current = lock_runs(conn, [s.pk for s, _, _ in ends] + [s.pk for s, _ in checkpoints])
    ending = []
    for state, status, final in ends:
        if state.is_current(current):
            ending.append((state, status, final))
            current[state.pk] = (status, state.last_epoch)  # a later write of it: stale
    storing = []
    for state, row in checkpoints:
        if state.is_current(current):
            storing.append((state.pk, row))
            current[state.pk] = ("running", row["epoch"])
    end_runs(conn, ending, now)
    add_checkpoints(conn, storing)
    return BatchWritten(started, {s.pk for s, _, _ in ending}, {pk for pk, _ in storing})


def finish_runs(
    conn: Connection, ends: Sequence[tuple[RunState, str, Metrics]], finished_at: datetime
) -> set[int]:
    """`write_batch` of finishes alone: the keys of the runs ended."""
    return write_batch(conn, (), ends, (), finished_at).ended


def store_checkpoints(
    conn: Connection, checkpoints: Sequence[tuple[RunState, dict[str, Any]]]
) -> set[int]:
    """`write_batch` of checkpoints alone: the keys of the runs whose checkpoint was stored."""
    return write_batch(conn, (), (), checkpoints, utcnow()).stored
