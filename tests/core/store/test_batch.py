"""The writer's batch (store.write_batch, and its parts alone: insert_new_runs, finish_runs,
store_checkpoints) on each backend: what it stores, and that a run whose view went stale is
left out, checked under the run's row lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, create_engine, func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from core import store
from core.db import normalize_url
from core.errors import StorageUnavailable
from core.reference import history_array
from core.store import Metrics, RunSpec, RunState
from core.tables import Checkpoint, Run, Study, utcnow
from service.storage import storage_errors


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    engine = create_engine(normalize_url(database_url))
    with engine.begin() as connection:
        yield connection
    engine.dispose()


def _advance(conn: Connection, moves: list[tuple[RunState, int]]) -> set[int]:
    """Each run's next checkpoint at `epoch`, and its state told so: a scene's history."""
    stored = store.store_checkpoints(conn, [(state, _row(epoch)) for state, epoch in moves])
    for state, epoch in moves:
        if state.pk in stored:
            state.last_epoch = epoch
    return stored


def _runs(conn: Connection) -> dict[str, Run]:
    return {r.run_id: r for r in conn.execute(select(Run.__table__))}  # type: ignore[misc]


def test_new_runs_are_inserted_once_and_taken_ids_left_out(conn: Connection) -> None:
    study = store.study_pk_of(conn, "s")
    assert store.study_pk_of(conn, "s") == study
    specs = [("a", study, RunSpec("s", 10, {"sigma": 1.5}, "iris")), ("b", study, RunSpec("s", 5))]
    states = store.insert_new_runs(conn, specs)
    assert set(states) == {"a", "b"}
    assert (states["a"].config, states["a"].dataset, states["a"].max_epochs) == (
        {"sigma": 1.5},
        "iris",
        10,
    )
    assert states["a"].status == "running" and states["a"].last_epoch is None
    assert states["a"].created_at.tzinfo is not None
    again = store.insert_new_runs(
        conn, [("a", study, RunSpec("s", 99)), ("c", study, RunSpec("s", 3))]
    )
    assert set(again) == {"c"}  # "a" exists: left for create_run to compare
    assert _runs(conn)["a"].max_epochs == 10


def _row(epoch: int, action: str = "continue", **extra: object) -> dict[str, object]:
    row: dict[str, object] = {name: None for name in store.CHECKPOINT_FIELDS}
    return row | {
        "epoch": epoch,
        "progress": epoch / 10,
        "mqe": 0.5,
        "topographic_error": 0.25,
        "dead_neuron_ratio": None,  # a diverged metric is stored as NULL
        "received_at": utcnow(),
        "action": action,
        "policy": "median",
        "reason": "a reason with 'quotes' and ünïcode",
        **extra,
    }


def test_checkpoints_are_stored_only_for_runs_whose_view_is_current(conn: Connection) -> None:
    study = store.study_pk_of(conn, "s")
    states = store.insert_new_runs(conn, [(r, study, RunSpec("s", 10)) for r in "abc"])
    a, b, c = states["a"], states["b"], states["c"]
    forecast = {"predicted_score": 0.125, "score_low": 0.1, "threshold": 0.3, "model_version": "m1"}
    assert store.store_checkpoints(conn, [(a, _row(0)), (b, _row(3, "stop", **forecast))]) == {
        a.pk,
        b.pk,
    }
    a.last_epoch = 0
    stale = RunState(**{**vars(c), "last_epoch": 4, "history": []})  # c has no checkpoint yet
    b_stale = RunState(**{**vars(b), "history": []})  # still thinks b is at None
    moves = [(a, _row(2)), (stale, _row(5)), (b_stale, _row(4))]
    assert store.store_checkpoints(conn, moves) == {a.pk}
    assert store.store_checkpoints(conn, []) == set()
    rows = _runs(conn)
    assert (rows["a"].last_epoch, rows["a"].n_checkpoints) == (2, 2)
    assert (rows["b"].last_epoch, rows["b"].n_checkpoints) == (3, 1)
    assert (rows["c"].last_epoch, rows["c"].n_checkpoints) == (None, 0)
    stored = {
        (r.run_pk, r.epoch): r
        for r in conn.execute(select(Checkpoint.__table__))  # type: ignore[misc]
    }
    assert set(stored) == {(a.pk, 0), (a.pk, 2), (b.pk, 3)}  # nothing of the refused ones
    got = stored[(b.pk, 3)]
    assert (got.action, got.policy, got.progress, got.mqe, got.dead_neuron_ratio) == (
        "stop",
        "median",
        0.3,
        0.5,
        None,
    )
    assert got.reason == "a reason with 'quotes' and ünïcode"
    assert (got.predicted_score, got.score_low, got.score_high, got.threshold) == (
        0.125,
        0.1,
        None,
        0.3,
    )
    assert got.model_version == "m1"
    sent = next(row["received_at"] for state, row in moves if state is a)
    assert stored[(a.pk, 2)].received_at.replace(tzinfo=None) == sent.replace(tzinfo=None)


def test_a_checkpoint_value_the_column_refuses_fails_the_statement(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        pytest.skip("SQLite does not check a VARCHAR's length")
    study = store.study_pk_of(conn, "s")
    run = store.insert_new_runs(conn, [("a", study, RunSpec("s", 10))])["a"]
    with pytest.raises(DBAPIError):  # not cut to the column's length
        store.store_checkpoints(conn, [(run, _row(0, action="continue-and-more"))])


def test_finish_ends_running_runs_and_numbers_the_completed_ones(conn: Connection) -> None:
    study = store.study_pk_of(conn, "s")
    states = store.insert_new_runs(conn, [(r, study, RunSpec("s", 2)) for r in "abcd"])
    moves = [(states[r], e) for r, e in zip("abcd", (2, 2, 1, 2), strict=True)]
    assert len(_advance(conn, moves)) == 4
    stale = RunState(**{**vars(states["d"]), "last_epoch": 1, "history": []})
    now = utcnow()
    ended = store.finish_runs(
        conn,
        [
            (states["a"], "completed", Metrics(0.5, 0.1, None)),  # at max_epochs: joins
            (states["b"], "completed", Metrics(0.7, 0.2, 0.0)),  # joins, numbered after a
            (states["c"], "completed", Metrics(0.9, 0.3, 0.0)),  # not at max_epochs
            (stale, "stopped", Metrics(None, None, None)),  # stale view: refused
        ],
        now,
    )
    assert ended == {states[r].pk for r in "abc"}
    rows = _runs(conn)
    assert (rows["a"].status, rows["a"].final_mqe, rows["a"].final_dead_neuron_ratio) == (
        "completed",
        0.5,
        None,
    )
    assert [rows[r].reference_seq for r in "abc"] == [1, 2, None]
    assert rows["a"].finished_at is not None and rows["d"].status == "running"
    assert conn.scalar(select(Study.reference_runs)) == 2
    # a finish of an ended run changes nothing
    assert store.finish_runs(conn, [(states["a"], "stopped", Metrics(1, 1, 1))], utcnow()) == set()
    assert _runs(conn)["a"].status == "completed"


def test_a_large_batch_of_checkpoints_is_stored_whole(conn: Connection) -> None:
    study = store.study_pk_of(conn, "s")
    states = store.insert_new_runs(conn, [(f"r{n}", study, RunSpec("s", 10)) for n in range(300)])
    batch = [(state, _row(n % 10, mqe=n / 7)) for n, state in enumerate(states.values())]
    assert store.store_checkpoints(conn, batch) == {state.pk for state in states.values()}
    stored = {r.run_pk: r.mqe for r in conn.execute(select(Checkpoint.__table__))}
    assert stored == {state.pk: n / 7 for n, state in enumerate(states.values())}


def test_a_cached_run_extends_its_history_array_one_row_at_a_time() -> None:
    """RunState.history_with/append (the writer's per-checkpoint history) always equals the
    history_array of the whole history, whether a point is stored with its array or not."""
    state = RunState(1, "r", 1, 40, "running", None, None, None, utcnow())
    points: list[store.HistoryRow] = [
        (1, 2.0, 0.5, 0.1),
        (2, None, 0.4, 0.1),  # a diverged metric: NaN in the array
        (4, 1.5, 0.3, None),
        (8, 1.2, 0.2, 0.0),
    ]
    for point in points:
        asked = state.history_with(point)
        expected = history_array([*state.history, point], 40)
        np.testing.assert_array_equal(asked, expected)
        assert not asked.flags.writeable  # shared with the decision: nobody may edit it
        state.append(point, asked)
        np.testing.assert_array_equal(state.history_with((40, 1.0, 0.1, 0.0))[:-1], expected)
    # A point stored without its array (the one-at-a-time path): the array is rebuilt.
    state.append((10, 1.1, 0.2, 0.0))
    np.testing.assert_array_equal(
        state.history_with((12, 1.0, 0.1, 0.0))[:-1], history_array(state.history, 40)
    )
    assert state.last_epoch == 10


def test_a_failed_write_surfaces_as_storage_unavailable(sqlite_url: str) -> None:
    """A batch that the database refuses (here: read-only) raises SQLAlchemy's own exception,
    which storage_errors turns into a 503 and which rolls the batch back."""
    engine = create_engine(normalize_url(sqlite_url))
    with engine.begin() as connection:
        study = store.study_pk_of(connection, "s")
        state = store.insert_new_runs(connection, [("a", study, RunSpec("s", 10))])["a"]
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA query_only=ON")
        with pytest.raises(OperationalError) as caught:
            store.store_checkpoints(connection, [(state, _row(1))])
        assert "readonly" in str(caught.value.orig) or "read-only" in str(caught.value.orig)
        with pytest.raises(StorageUnavailable), storage_errors():
            store.store_checkpoints(connection, [(state, _row(1))])
    engine.dispose()


def test_a_batch_waits_for_another_writer_of_its_runs_and_then_sees_its_view_is_stale(
    database_url: str,
) -> None:
    """Two writers (two replicas) with the same view of a run: the second's batch waits for
    the first's lock on the run, then finds it moved on and leaves it out (no lost update)."""
    engine = create_engine(normalize_url(database_url))
    writer = _writer_engine(database_url)
    try:
        with writer.begin() as conn:
            study = store.study_pk_of(conn, "s")
            state = store.insert_new_runs(conn, [("a", study, RunSpec("s", 10))])["a"]
        mine, theirs = RunState(**vars(state)), RunState(**vars(state))
        outcome: dict[str, set[int]] = {}
        first = writer.connect()
        first.begin()
        assert store.store_checkpoints(first, [(mine, _row(1))]) == {state.pk}

        def second_writer() -> None:
            with writer.begin() as conn:
                outcome["stored"] = store.store_checkpoints(conn, [(theirs, _row(2))])

        second = threading.Thread(target=second_writer)
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive()  # waiting for the first writer's lock
        first.commit()
        first.close()
        second.join(timeout=30)
        assert outcome == {"stored": set()}  # its view (no checkpoint yet) went stale
        with engine.connect() as conn:
            row = conn.execute(select(Run.last_epoch, Run.n_checkpoints)).one()
            assert tuple(row) == (1, 1)
            assert conn.scalar(select(func.count()).select_from(Checkpoint)) == 1
    finally:
        writer.dispose()
        engine.dispose()


def _writer_engine(url: str) -> Engine:
    """A writer's engine as the service makes it (SQLite: BEGIN IMMEDIATE)."""
    from core.db import make_engine

    return make_engine(url)


def _batch_scene(conn: Connection, prefix: str) -> dict[str, RunState]:
    """Runs of study `prefix`, ready for a batch: a and b at max_epochs (2), c at 1, d and e
    with no checkpoint yet."""
    study = store.study_pk_of(conn, prefix)
    states = store.insert_new_runs(
        conn, [(f"{prefix}-{r}", study, RunSpec(prefix, 2)) for r in "abcde"]
    )
    moves = [(states[f"{prefix}-{r}"], e) for r, e in zip("abc", (2, 2, 1), strict=True)]
    assert len(_advance(conn, moves)) == 3
    return {run_id.split("-", 1)[1]: state for run_id, state in states.items()}


def _batch(prefix: str, runs: dict[str, RunState], study_pk: int) -> tuple[Any, Any, Any]:
    spec = RunSpec(prefix, 7, {"sigma": 1.5, "note": "ünï"}, "iris")
    starts = [(f"{prefix}-new", study_pk, spec), (f"{prefix}-a", study_pk, spec)]  # a: taken
    stale_c = RunState(**{**vars(runs["c"]), "last_epoch": 2, "history": []})
    ends = [
        (runs["a"], "completed", Metrics(0.5, 0.1, None)),  # at max_epochs: joins, first
        (stale_c, "completed", Metrics(0.9, 0.3, 0.0)),  # stale view: refused
        (runs["b"], "completed", Metrics(0.7, 0.2, 0.0)),  # joins, second
    ]
    stale_e = RunState(**{**vars(runs["e"]), "last_epoch": 0, "history": []})
    checkpoints = [(runs["d"], _row(1, "stop", predicted_score=0.25)), (stale_e, _row(1))]
    return starts, ends, checkpoints


def _scene_rows(conn: Connection, prefix: str) -> dict[str, Any]:
    """What a scene left in the tables, without keys and times."""
    runs = {
        r.run_id.split("-", 1)[1]: (
            r.max_epochs,
            r.config,
            r.dataset,
            r.status,
            r.last_epoch,
            r.n_checkpoints,
            (r.final_mqe, r.final_topographic_error, r.final_dead_neuron_ratio),
            r.reference_seq is not None,
            r.finished_at is not None,
        )
        for r in conn.execute(select(Run.__table__).where(Run.run_id.startswith(f"{prefix}-")))
    }
    checkpoints = set(
        conn.execute(
            select(
                func.substr(Run.run_id, len(prefix) + 2),
                Checkpoint.epoch,
                Checkpoint.action,
                Checkpoint.predicted_score,
                Checkpoint.mqe,
            )
            .join(Checkpoint, Checkpoint.run_pk == Run.pk)
            .where(Run.run_id.startswith(f"{prefix}-"))
        ).all()
    )
    return {"runs": runs, "checkpoints": checkpoints}


def test_write_batch_stores_what_the_three_statements_store(conn: Connection) -> None:
    """store.write_batch against its parts (insert_new_runs, finish_runs, store_checkpoints)
    run one after another, on the same scene: the same rows, the same keys reported, and runs
    that complete at max_epochs numbered in batch order, with no number left unused."""
    now = utcnow()
    one = _batch_scene(conn, "one")
    starts, ends, checkpoints = _batch("one", one, one["a"].study_pk)
    started = store.insert_new_runs(conn, starts)
    ended = store.finish_runs(conn, ends, now)
    stored = store.store_checkpoints(conn, checkpoints)

    two = _batch_scene(conn, "two")
    starts, ends, checkpoints = _batch("two", two, two["a"].study_pk)
    written = store.write_batch(conn, starts, ends, checkpoints, now)

    assert set(started) == {"one-new"} and set(written.started) == {"two-new"}
    fresh = written.started["two-new"]
    assert (fresh.config, fresh.dataset, fresh.max_epochs, fresh.status) == (
        {"sigma": 1.5, "note": "ünï"},
        "iris",
        7,
        "running",
    )
    assert fresh.created_at.tzinfo is not None and fresh.last_epoch is None
    assert ended == {one["a"].pk, one["b"].pk} and written.ended == {two["a"].pk, two["b"].pk}
    assert stored == {one["d"].pk} and written.stored == {two["d"].pk}
    assert _scene_rows(conn, "one") == _scene_rows(conn, "two")
    seqs = dict(conn.execute(select(Run.run_id, Run.reference_seq)).all())
    # In batch order, a, c, b; c's view is stale: it is left out, and numbered not at all.
    assert [seqs[f"two-{r}"] for r in "abc"] == [1, 2, None]
    assert [seqs[f"one-{r}"] for r in "abc"] == [1, 2, None]
    counts = dict(conn.execute(select(Study.study_id, Study.reference_runs)).all())
    assert counts == {"one": 2, "two": 2}


def test_write_batch_with_nothing_to_write_writes_nothing(conn: Connection) -> None:
    written = store.write_batch(conn, [], [], [], utcnow())
    assert written == store.BatchWritten({}, set(), set())


def test_new_runs_read_back_as_sqlalchemy_reads_them(conn: Connection) -> None:
    """insert_new_runs's states (read back by its RETURNING) equal what a later read of the
    same rows gives."""
    study = store.study_pk_of(conn, "s")
    spec = RunSpec("s", 12, {"sigma": 1.5, "nested": {"a": [1, 2.5, None]}, "é": "ü"}, "iris")
    made = store.insert_new_runs(conn, [("a", study, spec), ("b", study, RunSpec("s", 3))])
    read = store.load_run_states(conn, ["a", "b"])
    for run_id in "ab":
        assert vars(made[run_id]) == vars(read[run_id])
    assert made["a"].created_at.tzinfo is not None
    assert made["a"].config == spec.config and made["b"].config is None


def test_write_batch_starts_a_run_whose_config_holds_an_integer_beyond_64_bits(
    conn: Connection,
) -> None:
    study = store.study_pk_of(conn, "s")
    spec = RunSpec("s", 5, {"seed": 10**30}, None)
    written = store.write_batch(conn, [("huge", study, spec)], [], [], utcnow())
    assert written.started["huge"].config == {"seed": 10**30}
    assert _runs(conn)["huge"].config == {"seed": 10**30}
