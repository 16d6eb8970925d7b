"""Each process's reference sets (ReferenceCache): read incrementally, by the numbers runs get
when they join their study's reference set, and never asked twice for a number nobody holds
(store.write_batch may leave one unused)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, create_engine, update

from core import store
from core.db import normalize_url
from core.store import Metrics, RunSpec
from core.tables import Study, utcnow
from service.reference_cache import ReferenceCache


def _complete(conn: Connection, study_pk: int, run_ids: list[str]) -> None:
    """Runs that reach max_epochs (2) and complete: each joins the reference set."""
    states = store.insert_new_runs(conn, [(r, study_pk, RunSpec("s", 2)) for r in run_ids])
    for epoch in (1, 2):
        row = {name: None for name in store.CHECKPOINT_FIELDS} | {
            "epoch": epoch,
            "progress": epoch / 2,
            "mqe": 1.0 / epoch,
            "topographic_error": 0.1,
            "dead_neuron_ratio": 0.0,
            "received_at": utcnow(),
            "action": "continue",
            "policy": "median",
            "reason": "test",
        }
        stored = store.store_checkpoints(conn, [(s, row) for s in states.values()])
        assert len(stored) == len(states)
        for s in states.values():
            s.append((epoch, 1.0 / epoch, 0.1, 0.0))
    ends = [(s, "completed", Metrics(0.5, 0.1, 0.0)) for s in states.values()]
    assert len(store.finish_runs(conn, ends, utcnow())) == len(states)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(normalize_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None]]:
    """Each read of new reference runs: (after_seq, limit)."""
    seen: list[tuple[int, int | None]] = []
    real = store.reference_histories_since

    def counting(conn: Any, study_pk: int, after_seq: int, limit: int | None = None) -> Any:
        seen.append((after_seq, limit))
        return real(conn, study_pk, after_seq, limit)

    monkeypatch.setattr(store, "reference_histories_since", counting)
    return seen


def _afters(reads: list[tuple[int, int | None]]) -> list[int]:
    return [after for after, _ in reads]


def test_reference_cache_reads_new_runs_once_and_steps_over_an_unused_number(
    engine: Engine, reads: list[tuple[int, int | None]]
) -> None:
    cache = ReferenceCache(refresh_s=0.0)
    with engine.begin() as conn:
        study = store.study_pk_of(conn, "s")
        _complete(conn, study, ["a", "b"])
        reference, _ = cache.get(conn, study)
        assert reference.n_runs == 2 and _afters(reads) == [0]
        # A number handed out to a run whose compare-and-swap then failed: the counter is one
        # ahead of the runs that hold numbers.
        conn.execute(update(Study).values(reference_runs=Study.reference_runs + 1))
        _complete(conn, study, ["c"])  # numbered 4; 3 is nobody's
        reference, _ = cache.get(conn, study)
        assert reference.n_runs == 3 and _afters(reads) == [0, 2]
        for _ in range(3):  # nothing new: the study's row alone is read
            assert cache.get(conn, study)[0].n_runs == 3
        assert _afters(reads) == [0, 2]
        # an unused number at the top: read once, then not again
        conn.execute(update(Study).values(reference_runs=Study.reference_runs + 1))
        assert cache.get(conn, study)[0].n_runs == 3 and _afters(reads) == [0, 2, 4]
        assert cache.get(conn, study)[0].n_runs == 3 and _afters(reads) == [0, 2, 4]


def test_many_new_runs_join_a_part_per_call_and_end_as_a_whole_load_would(
    engine: Engine, reads: list[tuple[int, int | None]]
) -> None:
    # A refresh is due once an hour: the parts that follow one must not wait for the next.
    cache = ReferenceCache(refresh_s=3600.0, load_max_runs=2)
    with engine.begin() as conn:
        study = store.study_pk_of(conn, "s")
        assert cache.get(conn, study)[0].n_runs == 0 and reads == []  # loaded: nothing yet
        _complete(conn, study, ["a", "b", "c", "d", "e"])
        cache.invalidate(study)
        assert [cache.get(conn, study)[0].n_runs for _ in range(5)] == [2, 4, 5, 5, 5]
        assert reads == [(0, 2), (2, 2), (4, 2)]
        parts = cache.get(conn, study)[0]
        # A new process's first load of the same study reads the whole set at once.
        reads.clear()
        whole, policy = ReferenceCache(refresh_s=3600.0, load_max_runs=2).get(conn, study)
        assert reads == [(0, None)] and whole.n_runs == 5
    np.testing.assert_array_equal(parts.curves, whole.curves)
    np.testing.assert_array_equal(parts.finals, whole.finals)
    ours, theirs = parts.thresholds(policy), whole.thresholds(policy)
    np.testing.assert_array_equal(ours.at_progress, theirs.at_progress)
    assert (ours.final, ours.n_runs) == (theirs.final, theirs.n_runs)


def test_a_part_that_ends_on_the_last_run_steps_over_an_unused_number_at_the_top(
    engine: Engine, reads: list[tuple[int, int | None]]
) -> None:
    cache = ReferenceCache(refresh_s=0.0, load_max_runs=2)
    with engine.begin() as conn:
        study = store.study_pk_of(conn, "s")
        cache.get(conn, study)
        _complete(conn, study, ["a", "b"])
        conn.execute(update(Study).values(reference_runs=Study.reference_runs + 1))  # 3: nobody's
        assert cache.get(conn, study)[0].n_runs == 2  # a full part: maybe more to come
        assert cache.get(conn, study)[0].n_runs == 2  # none: caught up, 3 stepped over
        assert cache.get(conn, study)[0].n_runs == 2
        assert reads == [(0, 2), (2, 2)]


def test_a_cache_needs_room_for_at_least_one_run_a_part() -> None:
    with pytest.raises(ValueError, match="load_max_runs must be at least 1, not 0"):
        ReferenceCache(refresh_s=1.0, load_max_runs=0)
