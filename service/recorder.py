"""The process's single writer: one batch of writes at a time, and writes that arrive together
are stored together, in one transaction with one commit (group commit).

Why: a commit is an fsync, and SQLite admits one writer at a time. Sixty-four workers posting
at once cost one fsync per batch instead of one each. A batch's statements run on the event
loop; what blocks (SQLite's COMMIT of all but a small batch, and a BEGIN IMMEDIATE that must
wait for another process's write) runs on the writer thread, so the loop keeps parsing
requests meanwhile, and Postgres's round trips are awaited (see `Recorder._write`).

Each general write of a batch runs in its own SAVEPOINT, so one that fails (a conflict, say)
takes nothing else with it. The writes of the workers' loop (start a run, its checkpoints,
finish it) go through `store.write_batch`, which cannot fail on their account: whatever it
cannot settle (a retry, a conflict, a lost race) goes one at a time, in its own transaction,
after the batch, through the store functions that check every rule.

A batch is planned first (its checkpoints decided, against committed reference sets), then
written by `store.write_batch`: a few statements for the whole batch, the same on both
backends. The process keeps each running run's history between checkpoints; the batch locks
and reads the rows of the runs it advances or ends first, so a history that changed
elsewhere (another replica, a finish) is noticed, reloaded and decided again. The model's
forecasts for the batch are made together, one network step for all the runs it has seen
before.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import structlog
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from core import store
from core.calibration import is_exploration
from core.db import Database, begin_nowait
from core.errors import InvalidInput, NotFound, OracleError
from core.policy import Situation, chain_for, decide
from core.store import FINISHED_STATUSES, Metrics, RunState
from core.tables import utcnow
from service import metrics
from service.api.present import run_public, run_public_of_state
from service.decisions import decision_of_verdict, record_one, row_of_verdict
from service.reference_cache import ReferenceCache, StudyView, study_view
from service.schemas import CheckpointIn, Decision, RunPublic
from service.serving.holder import ModelHolder
from service.storage import storage_errors

log = structlog.get_logger()
T = TypeVar("T")

# At most this many writes per batch: a batch holds its runs' row locks until it commits, and
# at 64 workers batches stay far below it.
MAX_BATCH = 256
# A SQLite batch of at most this many writes commits on the event loop, not on the writer
# thread. At the workers' training pace a batch is one or two checkpoints, and the hop to the
# thread and back (two wake-ups of an idle core) cost more than the fsync it spared the loop:
# paced replays of 150 runs, 4 of each alternately on a noisy box, medians: p50 8.2 -> 5.0 ms,
# p99 31 -> 28 ms, server CPU 1,718 -> 1,466 µs a decision (bench/RESULTS-service.md, tenth
# pass). A larger batch means others are arriving: the loop serves them while the thread
# waits for the disk.
INLINE_COMMIT_MAX = 4
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


@dataclass
class _Start:
    run_id: str
    spec: store.RunSpec
    future: asyncio.Future[tuple[RunPublic, bool]]


@dataclass
class _Finish:
    run_id: str
    status: str
    final: Metrics | None
    future: asyncio.Future[RunPublic]


_Item = _Pending | _Work | _Start | _Finish
# A checkpoint stored by a batch: its index in the batch, its run, the point, and the run's
# history with the point (kept by the run for its next checkpoint).
_Stored = tuple[int, RunState, store.HistoryRow, np.ndarray]


class _Outcome:
    """What storing a batch did: each write's result (None: not settled yet), the checkpoints
    stored and the runs started (for the cache, once committed)."""

    def __init__(self, batch: list[_Item]) -> None:
        self.results: list[Any] = [None] * len(batch)
        self.done: list[_Stored] = []
        self.started: list[tuple[RunState, str]] = []
        self.pendings = [(i, p) for i, p in enumerate(batch) if isinstance(p, _Pending)]
        self.runs_loop = [(i, p) for i, p in enumerate(batch) if isinstance(p, _Start | _Finish)]
        self.touched = [p.run_id for p in batch if isinstance(p, _Pending | _Finish)]

    def unsettled(self) -> bool:
        """Whether some write is left for the one-at-a-time path (blocking database calls)."""
        return any(self.results[i] is None for i, _ in (*self.runs_loop, *self.pendings))


@dataclass
class _Plan:
    """The starts, finishes and checkpoints a batch will write (see Recorder._plan)."""

    now: datetime
    starts: list[tuple[int, _Start, int]] = field(default_factory=list)  # index, start, study
    ends: list[tuple[int, RunState, str, Metrics]] = field(default_factory=list)
    checkpoints: list[tuple[_Stored, dict[str, Any]]] = field(default_factory=list)

    def start_keys(self) -> list[tuple[str, int, store.RunSpec]]:
        return [(item.run_id, study_pk, item.spec) for _, item, study_pk in self.starts]

    def end_rows(self) -> list[tuple[RunState, str, Metrics]]:
        return [(state, status, final) for _, state, status, final in self.ends]

    def checkpoint_rows(self) -> list[tuple[RunState, dict[str, Any]]]:
        return [(state, row) for (_, state, _, _), row in self.checkpoints]


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
        # Touched by one batch at a time.
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._study_pks: dict[str, int] = {}  # studies are never deleted
        self._study_ids: dict[int, str] = {}

    # --- any write -----------------------------------------------------------------------

    async def write(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)`, committed with the batch it joins. It runs on the event loop
        (as the batch's statements do): database work only, nothing that blocks otherwise."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Work(work, future))
        return await future

    def forget(self, run_id: str) -> None:
        """Drop a run's cached state (call from a write, i.e. on the writer thread)."""
        self._runs.pop(run_id, None)

    # --- the workers' loop ---------------------------------------------------------------

    async def start(self, run_id: str, spec: store.RunSpec) -> tuple[RunPublic, bool]:
        """Start the run (or return the stored one, for the same body); and whether it is new."""
        future: asyncio.Future[tuple[RunPublic, bool]] = asyncio.get_running_loop().create_future()
        self._enqueue(_Start(run_id, spec, future))
        return await future

    async def record(self, run_id: str, body: CheckpointIn) -> Decision:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending(run_id, body, future))
        return await future

    async def finish(self, run_id: str, status: str, final: Metrics | None) -> RunPublic:
        future: asyncio.Future[RunPublic] = asyncio.get_running_loop().create_future()
        self._enqueue(_Finish(run_id, status, final, future))
        return await future

    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take_batch()
            try:
                results = await self._write(batch)
            except Exception as e:  # the drain must survive; each waiter gets the error
                results = [e] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)

    async def _write(self, batch: list[_Item]) -> list[Any]:
        """Store the batch, then settle what it could not (one at a time, from the database).

        The batch's statements run on the event loop, and only what blocks goes to the writer
        thread. From a thread, each step of a statement had to win the GIL back from the busy
        event loop, which cost more than the statement itself (0.2 ms alone, 3-15 ms beside
        the loop under load). On SQLite, COMMIT (an fsync) of all but a small batch goes to the
        thread, and so does BEGIN IMMEDIATE when it must wait for another process's write; on
        Postgres each round trip is awaited (SQLAlchemy's asyncio engine, the same code run in
        a greenlet). The rare one-at-a-time writes go to the thread too.
        """
        loop = asyncio.get_running_loop()
        outcome = _Outcome(batch)
        try:
            with storage_errors():
                if self.db.async_writes is None:
                    await self._write_sqlite(batch, outcome)
                else:
                    async with self.db.async_writes.begin() as session:
                        await session.run_sync(
                            lambda s: self._store_batch(s.connection(), batch, outcome, s)
                        )
        except Exception as e:
            self._failed(batch, outcome, e)
        if outcome.unsettled():
            return await loop.run_in_executor(self._executor, self._settle, batch, outcome)
        return self._settle(batch, outcome)

    async def _write_sqlite(self, batch: list[_Item], outcome: _Outcome) -> None:
        """On a Connection, not a Session: the ORM's transaction bookkeeping around a batch
        (begin, connection, commit, close) cost ~80 µs of the event loop's time, and only
        general writes need it (`_store_batch` makes a Session for those).

        BEGIN IMMEDIATE is tried on the loop, where it takes the write lock at once unless
        another process holds it (`begin_nowait`); only then does it wait, on the thread. A
        hop to the thread and back took a batch's wall time, with the GIL handed over twice.
        COMMIT (an fsync) goes to the thread unless the batch is small (INLINE_COMMIT_MAX)."""
        loop = asyncio.get_running_loop()
        conn = self.db.write_engine.connect()
        try:
            if not begin_nowait(conn):  # another process writes: wait for it on the thread
                conn.close()
                conn = self.db.write_engine.connect()
                await loop.run_in_executor(self._executor, conn.begin)  # BEGIN IMMEDIATE
            self._store_batch(conn, batch, outcome)
            if len(batch) <= INLINE_COMMIT_MAX:  # a light load: nobody waits for the loop
                conn.commit()
            else:  # the loop parses the next requests while the disk syncs
                await loop.run_in_executor(self._executor, conn.commit)
        finally:
            conn.close()  # rolls back what was not committed

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

    def _store_batch(
        self,
        conn: Connection,
        batch: list[_Item],
        outcome: _Outcome,
        session: Session | None = None,
    ) -> None:
        """The batch's statements, in the caller's transaction on `conn` (of which `session`,
        if given, is the ORM's view; else one is made for the general writes, if any)."""
        results = outcome.results
        general = [(i, item) for i, item in enumerate(batch) if isinstance(item, _Work)]
        if general:
            # First: the rest run on Core statements that the ORM objects of these do not see.
            # A session made here never commits or rolls back the caller's transaction.
            own = session is None
            if session is None:
                session = Session(bind=conn, join_transaction_mode="rollback_only")
            try:
                for i, item in general:
                    try:
                        with storage_errors(), session.begin_nested():
                            results[i] = item.work(session)
                    except Exception as e:  # this write's own failure: the rest goes on
                        results[i] = e
            finally:
                if own:
                    session.close()
        self._fill_cache(conn, outcome.touched)
        plan = self._plan(conn, outcome)
        written = store.write_batch(
            conn, plan.start_keys(), plan.end_rows(), plan.checkpoint_rows(), plan.now
        )
        self._apply(conn, plan, written, outcome)

    def _failed(self, batch: list[_Item], outcome: _Outcome, error: Exception) -> None:
        """The batch's transaction failed: nothing of it was stored."""
        for run_id in outcome.touched:
            self.forget(run_id)
        results = outcome.results
        outcome.done = []
        outcome.started = []
        if isinstance(error, OracleError):  # storage unavailable: every write reports it
            outcome.results = [r if isinstance(r, OracleError) else error for r in results]
            return
        log.exception("write_batch_failed", size=len(batch))
        # The workers' writes go one at a time in `_settle`; general writes report the failure.
        outcome.results = [
            r if isinstance(r, OracleError) else (error if isinstance(item, _Work) else None)
            for r, item in zip(results, batch, strict=True)
        ]

    def _settle(self, batch: list[_Item], outcome: _Outcome) -> list[Any]:
        """After the batch's commit: the cache learns what was stored, and what the batch left
        unsettled goes one at a time, in its own transaction, through the ORM."""
        results = outcome.results
        for _, state, point, history in outcome.done:
            state.append(point, history)
        for state, study_id in outcome.started:  # committed: its first checkpoint needs no read
            self._runs[state.run_id] = state
            self._study_pks[study_id] = state.study_pk
            self._study_ids[state.study_pk] = study_id
        for i, item in outcome.runs_loop:
            if isinstance(item, _Finish):
                self.forget(item.run_id)
            if results[i] is None:
                try:
                    results[i] = (
                        self._start_one(item)
                        if isinstance(item, _Start)
                        else self._finish_one(item)
                    )
                except Exception as e:
                    results[i] = e
        for i, pending in outcome.pendings:
            if results[i] is None:  # one at a time, from the database's truth
                self.forget(pending.run_id)
                try:
                    results[i] = record_one(
                        self.db, self.references, self.models, pending.run_id, pending.body
                    )
                except Exception as e:
                    results[i] = e
        answered = Counter(
            (r.action, r.policy)
            for r in (results[i] for i, _ in outcome.pendings)
            if isinstance(r, Decision)
        )
        if answered:  # once per batch: a labelled child costs a lock and a lookup
            metrics.CHECKPOINTS.inc(answered.total())
            for (action, policy), n in answered.items():
                metrics.DECISIONS.labels(action=action, policy=policy).inc(n)
        return results

    def _plan(self, conn: Connection, outcome: _Outcome) -> _Plan:
        """What the batch's starts, finishes and checkpoints will write, decided before any of
        it is: checkpoints are decided against committed reference sets, never against runs
        this batch is about to end. Fills `outcome.results` with what fails here (a 404,
        422); what is neither planned nor failed goes one at a time after the batch."""
        plan = _Plan(now=utcnow())
        results = outcome.results
        firsts: dict[str, tuple[int, _Start]] = {}
        for i, item in outcome.runs_loop:
            if isinstance(item, _Start):
                # a second start of an id in one batch is left for the ORM path
                firsts.setdefault(item.run_id, (i, item))
        pks: dict[str, int] = {}  # a new study is cached only once its batch is committed
        for i, item in firsts.values():
            study_id = item.spec.study_id
            if study_id not in pks:
                pks[study_id] = self._study_pks.get(study_id) or store.study_pk_of(conn, study_id)
            plan.starts.append((i, item, pks[study_id]))
        for i, item in outcome.runs_loop:
            if not isinstance(item, _Finish):
                continue
            state = self._runs.get(item.run_id)
            if state is None or state.status != "running" or item.status not in FINISHED_STATUSES:
                continue  # unknown, already ended, a second finish in one batch: ORM path
            final = item.final if item.final is not None else state.last_metrics()
            plan.ends.append((i, state, item.status, final))
            state.status = item.status  # a later checkpoint of this batch: ORM path
        situated: list[tuple[int, _Pending, RunState, store.HistoryRow, Metrics]] = []
        situations: list[Situation] = []
        studies: dict[int, StudyView] = {}  # read once per batch
        for i, pending in outcome.pendings:
            try:
                state, point, observed, situation = self._situate(conn, pending, studies)
            except _SlowPath:
                continue
            except OracleError as e:
                results[i] = e
                continue
            situated.append((i, pending, state, point, observed))
            situations.append(situation)
        for (i, pending, state, point, observed), situation in zip(
            situated, self._forecast(situations), strict=True
        ):
            verdict = decide(chain_for(situation.policy.decider), situation)
            row = row_of_verdict(pending.body, observed, state.max_epochs, verdict, plan.now)
            plan.checkpoints.append(((i, state, point, situation.history), row))
        return plan

    def _apply(
        self, conn: Connection, plan: _Plan, written: store.BatchWritten, outcome: _Outcome
    ) -> None:
        """The answers to what the batch wrote. A run that did not move (its view was stale:
        another replica moved it, or ended it) is forgotten, and its write left unsettled: the
        ORM path decides it again from the database."""
        results = outcome.results
        for i, item, _ in plan.starts:
            state = written.started.get(item.run_id)
            if state is not None:
                outcome.started.append((state, item.spec.study_id))
                results[i] = (run_public_of_state(state, item.spec.study_id), True)
        for i, state, _, final in plan.ends:
            if state.pk in written.ended:
                study_id = self._study_id(conn, state.study_pk)
                results[i] = run_public_of_state(state, study_id, final, plan.now)
        for stored, row in plan.checkpoints:
            i, state, _, _ = stored
            if state.pk not in written.stored:
                self.forget(state.run_id)  # moved on elsewhere: reload, decide again
                continue
            outcome.done.append(stored)
            results[i] = decision_of_verdict(state.run_id, row)

    def _study_id(self, conn: Connection, study_pk: int) -> str:
        study_id = self._study_ids.get(study_pk)
        if study_id is None:
            study_id = self._study_ids[study_pk] = store.study_id_of(conn, study_pk)
        return study_id

    def _start_one(self, item: _Start) -> tuple[RunPublic, bool]:
        with storage_errors(), self.db.writes.begin() as session:
            run, created = store.create_run(session, item.run_id, item.spec)
            return run_public(run, item.spec.study_id), created

    def _finish_one(self, item: _Finish) -> RunPublic:
        with storage_errors(), self.db.writes.begin() as session:
            run = store.get_run(session, item.run_id)
            run, _changed = store.finish_run(session, run, item.status, item.final)
            return run_public(run, store.study_of(session, run).study_id)

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

    def _situate(
        self, conn: Any, pending: _Pending, studies: dict[int, StudyView]
    ) -> tuple[RunState, store.HistoryRow, Metrics, Situation]:
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
        predictor = self.models.current
        study = studies.get(state.study_pk)
        if study is None:
            study = studies[state.study_pk] = study_view(
                self.references, conn, state.study_pk, predictor
            )
        situation = Situation(
            epoch=body.epoch,
            max_epochs=state.max_epochs,
            history=state.history_with(point),
            policy=study.policy,
            thresholds=study.thresholds,
            predictor=predictor,
            context=state.context(),
            margins=study.margins,
            exploration=is_exploration(pending.run_id, study.policy.exploration),
        )
        return state, point, observed, situation

    @staticmethod
    def _forecast(situations: list[Situation]) -> list[Situation]:
        """The model's forecasts for the batch's runs that the oracle decides, made together
        (one network step for all the runs the model saw before, one run included); the
        others (another decider, a non-finite history) forecast lazily, if a policy asks."""
        predictor = next((s.predictor for s in situations if s.predictor is not None), None)
        many = getattr(predictor, "predict_many", None)
        if many is None:  # no model: the median rule and the others decide
            return situations
        wanted = [
            k
            for k, s in enumerate(situations)
            if s.predictor is predictor
            and s.policy.decider == "auto"  # the chain with the oracle policy
            and np.all(np.isfinite(s.history[:, 1:4]))
        ]
        if not wanted:
            return situations
        weights = [situations[k].policy.weights for k in wanted]
        forecasts = many(
            [situations[k].history for k in wanted],
            [(w.mqe, w.topographic_error, w.dead_neuron_ratio) for w in weights],
            [situations[k].context for k in wanted],
        )
        out = list(situations)
        for k, forecast in zip(wanted, forecasts, strict=True):
            out[k] = out[k].with_forecast(forecast)
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=True)
