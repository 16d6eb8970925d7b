"""The process's single writer: every write runs on one thread, and writes that arrive
together are stored together, in one transaction with one commit (group commit).

Why: a commit is an fsync, and SQLite admits one writer at a time. Sixty-four workers posting
at once cost one fsync per batch instead of one each, and the event loop keeps parsing requests
while a batch is written. Each write of a batch but the checkpoints runs in its own SAVEPOINT,
so one that fails (a conflict, say) takes nothing else with it.

A checkpoint usually costs one guarded UPDATE of its run and its share of one multi-row
INSERT: the process keeps each running run's history between checkpoints, and the UPDATE is a
compare-and-swap on the run's last epoch, so a history that changed elsewhere (another
replica, a finish) is noticed, reloaded and decided again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from oracle.core import store
from oracle.core.db import Database
from oracle.core.errors import InvalidInput, NotFound, OracleError
from oracle.core.policy import Situation, chain_for, decide
from oracle.core.reference import history_array
from oracle.core.store import Metrics, RunState
from oracle.service import metrics
from oracle.service.decisions import decision_of_verdict, record_one, row_of_verdict
from oracle.service.reference_cache import ReferenceCache
from oracle.service.schemas import CheckpointIn, Decision
from oracle.service.serving.holder import ModelHolder
from oracle.service.state import storage_errors

log = structlog.get_logger()
T = TypeVar("T")

MAX_BATCH = 256
CACHED_RUNS = 20_000


@dataclass
class _Pending:
    run_id: str
    body: CheckpointIn
    future: asyncio.Future[Decision]


@dataclass
class _Work:
    work: Callable[[Session], Any]
    future: asyncio.Future[Any]


_Item = _Pending | _Work


class _SlowPath(Exception):
    """The cached view cannot answer this one (a retry, an ended run, a lost race)."""


class Recorder:
    def __init__(self, db: Database, references: ReferenceCache, models: ModelHolder) -> None:
        self.db = db
        self.references = references
        self.models = models
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle-writer")
        self._queue: deque[_Item] = deque()
        self._draining: asyncio.Task[None] | None = None
        # Touched by the writer thread only.
        self._runs: OrderedDict[str, RunState] = OrderedDict()

    # --- any write -----------------------------------------------------------------------

    async def write(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` on the writer thread, committed with the batch it joins."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Work(work, future))
        return await future

    def forget(self, run_id: str) -> None:
        """Drop a run's cached state (call from a write, i.e. on the writer thread)."""
        self._runs.pop(run_id, None)

    # --- checkpoints ---------------------------------------------------------------------

    async def record(self, run_id: str, body: CheckpointIn) -> Decision:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending(run_id, body, future))
        return await future

    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = self._take_batch()
            try:
                results = await loop.run_in_executor(self._executor, self._write_batch, batch)
            except Exception as e:  # the drain must survive; each waiter gets the error
                results = [e] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    def _take_batch(self) -> list[_Item]:
        """Up to MAX_BATCH writes, at most one checkpoint per run (a run's next one waits)."""
        batch: list[_Item] = []
        later: list[_Item] = []
        seen: set[str] = set()
        while self._queue and len(batch) < MAX_BATCH:
            item = self._queue.popleft()
            if isinstance(item, _Pending):
                if item.run_id in seen:
                    later.append(item)
                    continue
                seen.add(item.run_id)
            batch.append(item)
        self._queue.extendleft(reversed(later))
        return batch

    def _write_batch(self, batch: list[_Item]) -> list[Any]:
        results: list[Any] = [None] * len(batch)
        done: list[tuple[int, RunState, store.HistoryRow]] = []
        pendings = [(i, p) for i, p in enumerate(batch) if isinstance(p, _Pending)]
        try:
            with storage_errors(), self.db.writes.begin() as session:
                # Other writes first: the checkpoints below run on Core statements that the
                # ORM objects of these do not see.
                for i, item in enumerate(batch):
                    if isinstance(item, _Work):
                        try:
                            with storage_errors(), session.begin_nested():
                                results[i] = item.work(session)
                        except Exception as e:  # this write's own failure: the rest goes on
                            results[i] = e
                conn = session.connection()
                self._fill_cache(conn, [p.run_id for _, p in pendings])
                rows: list[dict[str, Any]] = []
                for i, pending in pendings:
                    try:
                        state, point, row = self._plan(conn, pending)
                    except _SlowPath:
                        continue
                    except OracleError as e:
                        results[i] = e
                        continue
                    if not store.advance_run(conn, state, pending.body.epoch):
                        self.forget(pending.run_id)  # moved on elsewhere: reload, decide again
                        continue
                    rows.append(row)
                    done.append((i, state, point))
                    results[i] = decision_of_verdict(pending.run_id, row)
                store.insert_checkpoint_rows(conn, rows)
        except OracleError as e:  # storage unavailable: nothing of this batch was stored
            for _, pending in pendings:
                self.forget(pending.run_id)
            return [r if isinstance(r, OracleError) else e for r in results]
        except Exception as e:
            log.exception("write_batch_failed", size=len(batch))
            for _, pending in pendings:
                self.forget(pending.run_id)
            # Checkpoints go one at a time below; other writes report the failure.
            results = [
                r if isinstance(r, OracleError) else (e if isinstance(item, _Work) else None)
                for r, item in zip(results, batch, strict=True)
            ]
            done = []
        for _, state, point in done:
            state.history.append(point)
            state.last_epoch = point[0]
        for i, pending in pendings:
            if results[i] is None:  # one at a time, from the database's truth
                self.forget(pending.run_id)
                try:
                    results[i] = record_one(
                        self.db, self.references, self.models, pending.run_id, pending.body
                    )
                except Exception as e:
                    results[i] = e
        for i, _ in pendings:
            if isinstance(results[i], Decision):
                metrics.CHECKPOINTS.inc()
                metrics.DECISIONS.labels(action=results[i].action, policy=results[i].policy).inc()
        return results

    def _fill_cache(self, conn: Connection, run_ids: list[str]) -> None:
        missing = [r for r in run_ids if r not in self._runs]
        if missing:
            for run_id, state in store.load_run_states(conn, missing).items():
                self._runs[run_id] = state
        for run_id in run_ids:
            if run_id in self._runs:
                self._runs.move_to_end(run_id)
        while len(self._runs) > CACHED_RUNS:
            self._runs.popitem(last=False)

    def _plan(
        self, conn: Any, pending: _Pending
    ) -> tuple[RunState, store.HistoryRow, dict[str, Any]]:
        body = pending.body
        state = self._runs.get(pending.run_id)
        if state is None:
            raise NotFound(f"run {pending.run_id!r} does not exist")
        if body.epoch > state.max_epochs:
            raise InvalidInput(
                f"epoch {body.epoch} is outside 0..{state.max_epochs} (the run's max_epochs)"
            )
        if state.status != "running" or (
            state.last_epoch is not None and body.epoch <= state.last_epoch
        ):
            raise _SlowPath
        observed = Metrics.of(body.mqe, body.topographic_error, body.dead_neuron_ratio)
        point = (body.epoch, observed.mqe, observed.topographic_error, observed.dead_neuron_ratio)
        reference, policy = self.references.get(conn, state.study_pk)
        situation = Situation(
            epoch=body.epoch,
            max_epochs=state.max_epochs,
            history=history_array([*state.history, point], state.max_epochs),
            policy=policy,
            thresholds=reference.thresholds(policy),
            predictor=self.models.current,
        )
        verdict = decide(chain_for(policy.decider), situation)
        row = row_of_verdict(body, observed, state.max_epochs, verdict)
        row["run_pk"] = state.pk
        return state, point, row

    def close(self) -> None:
        self._executor.shutdown(wait=True)
