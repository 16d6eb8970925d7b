"""The group-commit writer: batches, and cached run state that another replica made stale."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import structlog
import structlog.testing
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from core import store
from core.tables import Checkpoint, Run
from service.main import create_app
from tests.conftest import auth, settings_for

POINT = {"mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}


@asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app started (its lifespan) and a worker's client calling it in process: the
    concurrent requests of a test share one event loop with the app's writer."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test", headers=auth("worker")) as c,
    ):
        yield c


@pytest.fixture
def two_replicas(database_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    """Two API processes' worth of state (two apps) on one database."""
    a = TestClient(create_app(settings_for(database_url)), headers=auth("worker"))
    b = TestClient(create_app(settings_for(database_url)), headers=auth("worker"))
    with a, b:
        yield a, b


def test_recorder_notices_a_checkpoint_stored_by_another_replica(
    two_replicas: tuple[TestClient, TestClient], database_url: str
) -> None:
    a, b = two_replicas
    a.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 100})
    assert a.post("/v1/runs/r/checkpoints", json={"epoch": 1, **POINT}).status_code == 200
    assert b.post("/v1/runs/r/checkpoints", json={"epoch": 2, **POINT}).status_code == 200
    # a's cached history ends at epoch 1; its compare-and-swap fails, it reloads and stores.
    assert a.post("/v1/runs/r/checkpoints", json={"epoch": 3, **POINT}).status_code == 200
    # a retry of epoch 2 through a returns b's stored answer; other values conflict.
    assert a.post("/v1/runs/r/checkpoints", json={"epoch": 2, **POINT}).status_code == 200
    other = a.post("/v1/runs/r/checkpoints", json={"epoch": 2, **POINT, "mqe": 2.0})
    assert other.status_code == 409
    run = a.get("/v1/runs/r").json()
    assert [c["epoch"] for c in run["checkpoints"]] == [1, 2, 3]
    assert run["n_checkpoints"] == 3 and run["last_epoch"] == 3


def test_recorder_refuses_a_checkpoint_after_another_replica_ended_the_run(
    two_replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = two_replicas
    a.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 100})
    a.post("/v1/runs/r/checkpoints", json={"epoch": 1, **POINT})
    assert b.post("/v1/runs/r/finish", json={"status": "stopped"}).status_code == 200
    response = a.post("/v1/runs/r/checkpoints", json={"epoch": 2, **POINT})
    assert response.status_code == 409
    assert "ended" in response.json()["detail"]


def test_recorder_sees_a_policy_changed_by_another_replica(database_url: str) -> None:
    a = TestClient(create_app(settings_for(database_url)), headers=auth("admin"))
    b = TestClient(create_app(settings_for(database_url)), headers=auth("admin"))
    with a, b:
        a.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 10})
        body = a.post("/v1/runs/r/checkpoints", json={"epoch": 5, **POINT, "mqe": 5.0}).json()
        assert body["policy"] == "warmup"
        policy = {"threshold": {"mode": "absolute", "value": 1.0}}
        assert b.put("/v1/studies/s", json={"policy": policy}).status_code == 200
        body = a.post("/v1/runs/r/checkpoints", json={"epoch": 6, **POINT, "mqe": 5.0}).json()
        assert (body["action"], body["threshold"]) == ("stop", 1.0)


def test_recorder_stores_concurrent_checkpoints_of_many_runs_exactly_once(
    database_url: str,
) -> None:
    app = create_app(settings_for(database_url))
    runs, epochs = 40, 6

    async def scenario() -> list[httpx.Response]:
        async with _serving(app) as client:
            await asyncio.gather(
                *(
                    client.put(f"/v1/runs/c{i}", json={"study_id": "s", "max_epochs": 10})
                    for i in range(runs)
                )
            )

            async def worker(i: int) -> list[httpx.Response]:
                out = []
                for epoch in range(1, epochs + 1):
                    body = {"epoch": epoch, **POINT}
                    out.append(await client.post(f"/v1/runs/c{i}/checkpoints", json=body))
                    if epoch == 3:  # a retry racing with nothing: the stored answer again
                        out.append(await client.post(f"/v1/runs/c{i}/checkpoints", json=body))
                return out

            results = await asyncio.gather(*(worker(i) for i in range(runs)))
            return [r for rs in results for r in rs]

    responses = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Checkpoint)) == runs * epochs
        assert set(conn.execute(select(Run.last_epoch, Run.n_checkpoints))) == {(epochs, epochs)}
    engine.dispose()


def test_recorder_finishes_with_the_last_checkpoint_even_when_another_replica_stored_it(
    two_replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = two_replicas
    a.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 3})
    a.post("/v1/runs/r/checkpoints", json={"epoch": 1, **POINT})
    b.post("/v1/runs/r/checkpoints", json={"epoch": 2, **POINT})
    b.post("/v1/runs/r/checkpoints", json={"epoch": 3, **POINT, "mqe": 0.25})
    # a's cache says the run is at epoch 1: its compare-and-swap fails and the ORM path,
    # reading the database, takes epoch 3's values as the finals.
    finished = a.post("/v1/runs/r/finish", json={"status": "completed"})
    assert finished.status_code == 200
    assert finished.json()["final"]["mqe"] == 0.25
    assert finished.json()["last_epoch"] == 3
    # the same finish again is a retry; another status is a conflict
    assert a.post("/v1/runs/r/finish", json={"status": "completed"}).json() == finished.json()
    assert a.post("/v1/runs/r/finish", json={"status": "stopped"}).status_code == 409


def test_recorder_batches_starts_checkpoints_and_finishes_of_many_runs(database_url: str) -> None:
    """Workers that start, report and finish at once: every answer matches what is stored,
    and completed runs join the reference set exactly once each, numbered 1..n."""
    app = create_app(settings_for(database_url))
    runs, max_epochs = 30, 4

    async def scenario() -> dict[int, list[httpx.Response]]:
        async with _serving(app) as client:

            async def worker(i: int) -> list[httpx.Response]:
                base = f"/v1/runs/m{i}"
                spec = {"study_id": "mixed", "max_epochs": max_epochs, "config": {"i": i}}
                out = [await client.put(base, json=spec)]
                out.append(await client.put(base, json=spec))  # a retried start
                last = max_epochs if i % 3 else 2  # every third run stops early
                for epoch in range(1, last + 1):
                    point = {**POINT, "mqe": 1.0 + i + epoch / 10}
                    out.append(
                        await client.post(f"{base}/checkpoints", json={"epoch": epoch, **point})
                    )
                status = "completed" if i % 3 else "stopped"
                # the finish and a late checkpoint race: one of them is first
                finish, late = await asyncio.gather(
                    client.post(f"{base}/finish", json={"status": status}),
                    client.post(
                        f"{base}/checkpoints",
                        json={"epoch": last + 1, **POINT, "mqe": 1.0 + i + (last + 1) / 10},
                    )
                    if last < max_epochs
                    else client.post(f"{base}/finish", json={"status": status}),
                )
                return [*out, finish, late]

            results = await asyncio.gather(*(worker(i) for i in range(runs)))
            return dict(enumerate(results))

    with structlog.testing.capture_logs() as logs:
        answers = asyncio.run(scenario())
    # the batches took the Core statements: none failed over to one-at-a-time
    assert not [e for e in logs if e["event"] == "write_batch_failed"], logs
    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = {
            r.run_id: r
            for r in conn.execute(
                select(
                    Run.run_id,
                    Run.status,
                    Run.last_epoch,
                    Run.n_checkpoints,
                    Run.final_mqe,
                    Run.reference_seq,
                    Run.config,
                )
            )
        }
        n_stored = conn.scalar(select(func.count()).select_from(Checkpoint))
    engine.dispose()
    stored_checkpoints = 0
    for i, responses in answers.items():
        created, retried, *checkpoints, finish, late = responses
        assert (created.status_code, retried.status_code) == (201, 200)
        assert retried.json() == created.json()
        assert all(c.status_code == 200 for c in checkpoints), [c.text for c in checkpoints]
        assert finish.status_code == 200, finish.text
        row = stored[f"m{i}"]
        assert row.config == {"i": i}
        assert row.status == ("completed" if i % 3 else "stopped")
        assert finish.json()["status"] == row.status
        if i % 3:  # the second finish was a retry: the same answer
            assert late.status_code == 200 and late.json() == finish.json()
        elif late.status_code == 200:  # the checkpoint came first; the finals are its values
            assert row.last_epoch == 3
        else:  # the finish came first: the checkpoint was refused and not stored
            assert late.status_code == 409 and row.last_epoch == 2
        assert row.n_checkpoints == row.last_epoch
        assert finish.json()["final"]["mqe"] == row.final_mqe
        assert row.final_mqe == pytest.approx(1.0 + i + row.last_epoch / 10)
        stored_checkpoints += row.n_checkpoints
    assert n_stored == stored_checkpoints
    seqs = sorted(r.reference_seq for r in stored.values() if r.reference_seq is not None)
    completed = [r for r in stored.values() if r.status == "completed"]
    assert seqs == list(range(1, len(completed) + 1))


def test_recorder_writes_the_workers_writes_that_arrive_together_in_one_write_batch(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start, a finish and a checkpoint that arrive together are one batch: one
    store.write_batch (a few statements in one transaction, on both backends), also beside a
    general write (a study's settings) and a start in a study not seen yet."""
    seen: list[tuple[frozenset[str], frozenset[int], frozenset[str]]] = []  # starts, ends, points
    real = store.write_batch

    def spying(conn: Any, starts: Any, ends: Any, checkpoints: Any, now: Any) -> Any:
        if starts or ends or checkpoints:
            seen.append(
                (
                    frozenset(run_id for run_id, _, _ in starts),
                    frozenset(state.pk for state, _, _ in ends),
                    frozenset(state.run_id for state, _ in checkpoints),
                )
            )
        return real(conn, starts, ends, checkpoints, now)

    monkeypatch.setattr(store, "write_batch", spying)
    app = create_app(settings_for(database_url))
    spec = {"study_id": "s", "max_epochs": 5}

    async def scenario() -> list[httpx.Response]:
        async with _serving(app) as client:
            out = [await client.put(f"/v1/runs/{r}", json=spec) for r in ("a", "b")]
            out.append(await client.post("/v1/runs/a/checkpoints", json={"epoch": 1, **POINT}))
            seen.clear()
            out += await asyncio.gather(
                client.put("/v1/runs/c", json=spec),
                client.post("/v1/runs/a/finish", json={"status": "stopped"}),
                client.post("/v1/runs/b/checkpoints", json={"epoch": 1, **POINT}),
            )
            out += await asyncio.gather(
                client.put("/v1/studies/other", json={"description": "x"}, headers=auth("admin")),
                client.post("/v1/runs/c/checkpoints", json={"epoch": 1, **POINT}),
                client.put("/v1/runs/d", json={**spec, "study_id": "new"}),
            )
            return out

    responses = asyncio.run(scenario())
    codes = [r.status_code for r in responses]
    assert codes == [201, 201, 200, 201, 200, 200, 201, 200, 201], codes
    assert len(seen) == 2, seen
    assert seen[0][0] == {"c"} and len(seen[0][1]) == 1 and seen[0][2] == {"b"}
    assert seen[1][0] == {"d"} and seen[1][2] == {"c"}
    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = set(conn.execute(select(Run.run_id, Run.last_epoch, Run.status)))
        assert conn.scalar(select(func.count()).select_from(Checkpoint)) == 3
    engine.dispose()
    assert stored == {
        ("a", 1, "stopped"),
        ("b", 1, "running"),
        ("c", 1, "running"),
        ("d", None, "running"),
    }


def test_sqlite_writer_waits_for_another_process_write_lock_off_the_event_loop(
    sqlite_url: str,
) -> None:
    """The batch's BEGIN IMMEDIATE is tried on the event loop without waiting; while another
    process holds the write lock, the batch waits for it on the writer thread, and the loop
    keeps serving meanwhile."""
    app = create_app(settings_for(sqlite_url))

    async def scenario() -> None:
        async with _serving(app) as client:
            put = await client.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 10})
            assert put.status_code == 201
            other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process writes
            try:
                pending = asyncio.create_task(
                    client.post("/v1/runs/r/checkpoints", json={"epoch": 1, **POINT})
                )
                await asyncio.sleep(0.3)
                assert not pending.done()  # waiting for the lock...
                assert (await client.get("/healthz")).status_code == 200  # ...off the loop
                assert not pending.done()
            finally:
                other.rollback()
                other.close()
            answer = await asyncio.wait_for(pending, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.json()["epoch"] == 1

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    # stored by the batch once it had the lock, not failed over to one-at-a-time
    assert not [e for e in logs if e["event"] == "write_batch_failed"], logs
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.scalar(select(Run.last_epoch).where(Run.run_id == "r")) == 1
        assert conn.scalar(select(func.count()).select_from(Checkpoint)) == 1
    engine.dispose()


def test_sqlite_commits_a_lone_checkpoint_on_the_loop_and_a_crowd_on_the_writer_thread(
    sqlite_url: str,
) -> None:
    """At the training pace a hop to the writer thread costs more than the fsync it spares
    the loop; under load the loop must keep parsing while the disk syncs."""
    import threading

    from sqlalchemy import event

    from service.recorder import INLINE_COMMIT_MAX

    app = create_app(settings_for(sqlite_url))
    committed_on: list[str] = []

    async def scenario() -> None:
        async with _serving(app) as client:
            engine = app.state.oracle.db.write_engine
            event.listen(
                engine, "commit", lambda _conn: committed_on.append(threading.current_thread().name)
            )
            spec = {"study_id": "s", "max_epochs": 5}
            assert (await client.put("/v1/runs/lone", json=spec)).status_code == 201
            committed_on.clear()
            lone = await client.post("/v1/runs/lone/checkpoints", json={"epoch": 1, **POINT})
            assert lone.status_code == 200
            assert committed_on == [threading.current_thread().name]  # the loop's own thread
            n = 4 * INLINE_COMMIT_MAX
            started = await asyncio.gather(
                *(client.put(f"/v1/runs/c{i}", json=spec) for i in range(n))
            )
            assert {r.status_code for r in started} == {201}
            committed_on.clear()
            crowd = await asyncio.gather(
                *(
                    client.post(f"/v1/runs/c{i}/checkpoints", json={"epoch": 1, **POINT})
                    for i in range(n)
                )
            )
            assert {r.status_code for r in crowd} == {200}
            assert any(name.startswith("oracle-writer") for name in committed_on), committed_on

    asyncio.run(scenario())
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        assert (
            conn.scalar(select(func.count()).select_from(Checkpoint)) == 1 + 4 * INLINE_COMMIT_MAX
        )
    engine.dispose()
