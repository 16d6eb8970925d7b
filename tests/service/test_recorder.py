"""The group-commit writer: batches, and cached run state that another replica made stale."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from oracle.core.tables import Checkpoint, Run
from oracle.service.main import create_app
from tests.conftest import auth, settings_for

POINT = {"mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}


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
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=auth("worker")
            ) as client,
        ):
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
