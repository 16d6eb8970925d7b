"""Each process's reference sets (ReferenceCache): read incrementally, by the numbers runs get
when they join their study's reference set, and never asked twice for a number nobody holds
(store.write_batch may leave one unused)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, update

from oracle.core import store
from oracle.core.db import normalize_url
from oracle.core.store import Metrics, RunSpec
from oracle.core.tables import Study, utcnow
from oracle.service.reference_cache import ReferenceCache


def _complete(conn: Connection, study_pk: int, run_ids: list[str]) -> None:
    """Runs that reach max_epochs (2) and complete: each joins the reference set."""
    states = store.insert_new_runs(conn, [(r, study_pk, RunSpec("s", 2)) for r in run_ids])
    for epoch in (1, 2):
        row = {name: None for name in store._CHECKPOINT_FIELDS} | {
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


def test_reference_cache_reads_new_runs_once_and_steps_over_an_unused_number(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real = store.reference_histories_since

    def counting(conn: Any, study_pk: int, after_seq: int) -> Any:
        reads.append(after_seq)
        return real(conn, study_pk, after_seq)

    monkeypatch.setattr(store, "reference_histories_since", counting)
    engine = create_engine(normalize_url(database_url))
    cache = ReferenceCache(refresh_s=0.0)
    with engine.begin() as conn:
        study = store.study_pk_of(conn, "s")
        _complete(conn, study, ["a", "b"])
        reference, _ = cache.get(conn, study)
        assert reference.n_runs == 2 and reads == [0]
        # A number handed out to a run whose compare-and-swap then failed: the counter is one
        # ahead of the runs that hold numbers.
        conn.execute(update(Study).values(reference_runs=Study.reference_runs + 1))
        _complete(conn, study, ["c"])  # numbered 4; 3 is nobody's
        reference, _ = cache.get(conn, study)
        assert reference.n_runs == 3 and reads == [0, 2]
        for _ in range(3):  # nothing new: the study's row alone is read
            assert cache.get(conn, study)[0].n_runs == 3
        assert reads == [0, 2]
        # an unused number at the top: read once, then not again
        conn.execute(update(Study).values(reference_runs=Study.reference_runs + 1))
        assert cache.get(conn, study)[0].n_runs == 3 and reads == [0, 2, 4]
        assert cache.get(conn, study)[0].n_runs == 3 and reads == [0, 2, 4]
    engine.dispose()
