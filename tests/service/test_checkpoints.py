"""The checkpoint contract: decisions, idempotent retries, conflicts, bad input storing nothing."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select

from core.tables import Checkpoint, Run

POINT = {"mqe": 1.0, "topographic_error": 0.2, "dead_neuron_ratio": 0.1}


def start(client: TestClient, run_id: str = "r1", max_epochs: int = 100, study: str = "s1") -> None:
    response = client.put(f"/v1/runs/{run_id}", json={"study_id": study, "max_epochs": max_epochs})
    assert response.status_code in (200, 201), response.text


def post(client: TestClient, epoch: int, run_id: str = "r1", **values: Any) -> Any:
    return client.post(f"/v1/runs/{run_id}/checkpoints", json={"epoch": epoch, **POINT, **values})


def stored(url: str) -> tuple[int, list[tuple[int, str]]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.scalar(select(func.count()).select_from(Checkpoint))
        rows = [tuple(r) for r in conn.execute(select(Checkpoint.epoch, Checkpoint.action))]
    engine.dispose()
    return int(count or 0), rows  # type: ignore[return-value]


def test_checkpoint_answers_with_a_decision(client: TestClient) -> None:
    start(client)
    response = post(client, 1)
    assert response.status_code == 200
    body = response.json()
    assert body["run_id"] == "r1" and body["epoch"] == 1
    assert body["action"] == "continue"
    assert body["policy"] == "warmup"
    assert "minimum" in body["reason"]


def test_checkpoint_retry_returns_the_stored_decision(
    client: TestClient, database_url: str
) -> None:
    start(client)
    first = post(client, 5, wall_s=1.5).json()
    again = post(client, 5, wall_s=1.5)
    assert again.status_code == 200
    assert again.json() == first
    assert stored(database_url)[0] == 1


def test_checkpoint_other_values_for_a_stored_epoch_conflict(
    client: TestClient, database_url: str
) -> None:
    start(client)
    post(client, 5)
    response = post(client, 5, mqe=2.0)
    assert response.status_code == 409
    assert "other values" in response.json()["detail"]
    assert stored(database_url)[0] == 1


def test_checkpoint_lower_epoch_conflicts(client: TestClient, database_url: str) -> None:
    start(client)
    post(client, 5)
    post(client, 10)
    response = post(client, 7)
    assert response.status_code == 409
    assert "below" in response.json()["detail"]
    assert stored(database_url)[0] == 2


def test_checkpoint_after_the_run_ended_conflicts(client: TestClient, database_url: str) -> None:
    start(client)
    post(client, 5)
    assert client.post("/v1/runs/r1/finish", json={"status": "stopped"}).status_code == 200
    response = post(client, 6)
    assert response.status_code == 409
    assert "ended" in response.json()["detail"]
    assert stored(database_url)[0] == 1


def test_checkpoint_unknown_run_is_404(client: TestClient) -> None:
    response = post(client, 1, run_id="nope")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


@pytest.mark.parametrize("text", ["null", "NaN", "Infinity"])
def test_checkpoint_diverged_metric_is_stored_and_stops(
    client: TestClient, database_url: str, text: str
) -> None:
    start(client)
    body = f'{{"epoch": 30, "mqe": {text}, "topographic_error": 0.3, "dead_neuron_ratio": 0.2}}'
    response = client.post(
        "/v1/runs/r1/checkpoints", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["action"] == "stop"
    assert response.json()["reason"] == "diverged"
    run = client.get("/v1/runs/r1").json()
    assert run["checkpoints"][0]["mqe"] is None
    assert run["checkpoints"][0]["topographic_error"] == 0.3
    # A retry of the same non-finite values is the same checkpoint.
    again = client.post(
        "/v1/runs/r1/checkpoints", content=body, headers={"content-type": "application/json"}
    )
    assert again.status_code == 200
    assert stored(database_url)[0] == 1


BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("negative mqe", {"epoch": 1, **POINT, "mqe": -0.1}, "mqe"),
    ("te above 1", {"epoch": 1, **POINT, "topographic_error": 1.5}, "topographic_error"),
    ("dead below 0", {"epoch": 1, **POINT, "dead_neuron_ratio": -0.01}, "dead_neuron_ratio"),
    ("epoch as string", {"epoch": "1", **POINT}, "epoch"),
    ("epoch as float", {"epoch": 1.5, **POINT}, "epoch"),
    ("negative epoch", {"epoch": -1, **POINT}, "epoch"),
    ("mqe as string", {"epoch": 1, **POINT, "mqe": "1.0"}, "mqe"),
    ("mqe as bool", {"epoch": 1, **POINT, "mqe": True}, "mqe"),
    ("missing field", {"epoch": 1, "mqe": 1.0, "topographic_error": 0.1}, "dead_neuron_ratio"),
    ("unknown field", {"epoch": 1, **POINT, "loss": 3}, "loss"),
    ("negative wall_s", {"epoch": 1, **POINT, "wall_s": -2}, "wall_s"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_checkpoint_bad_input_is_422_and_stores_nothing(
    client: TestClient, database_url: str, case: str, body: dict[str, Any], field: str
) -> None:
    start(client)
    response = client.post("/v1/runs/r1/checkpoints", json=body)
    assert response.status_code == 422, (case, response.text)
    assert any(e["field"] == field for e in response.json()["detail"]), response.json()
    assert stored(database_url)[0] == 0


def test_checkpoint_epoch_above_max_epochs_is_422(client: TestClient, database_url: str) -> None:
    start(client, max_epochs=20)
    response = post(client, 21)
    assert response.status_code == 422
    assert "0..20" in response.json()["detail"]
    assert stored(database_url)[0] == 0


def test_checkpoint_body_over_the_limit_is_413(client: TestClient, database_url: str) -> None:
    start(client)
    response = client.post(
        "/v1/runs/r1/checkpoints",
        content=b'{"epoch": 1, "pad": "' + b"x" * 400_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]
    assert stored(database_url)[0] == 0


def test_checkpoint_at_max_epochs_continues_and_run_completes(
    client: TestClient, database_url: str
) -> None:
    start(client, max_epochs=10)
    response = post(client, 10)
    assert response.json()["action"] == "continue"
    assert response.json()["policy"] == "guard"
    finished = client.post("/v1/runs/r1/finish", json={"status": "completed"}).json()
    assert finished["status"] == "completed"
    assert finished["final"] == POINT
    engine = create_engine(database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(Run.reference_seq)) == 1
    engine.dispose()


def run_to_end(client: TestClient, run_id: str, scale: float, max_epochs: int = 100) -> None:
    start(client, run_id, max_epochs)
    for epoch in (10, 30, 60, 100):
        mqe = scale * (1 + 5 / epoch)
        post(client, epoch, run_id, mqe=mqe)
    client.post(f"/v1/runs/{run_id}/finish", json={"status": "completed"})


def test_checkpoint_median_rule_stops_a_run_worse_than_the_median(client: TestClient) -> None:
    for i, scale in enumerate([1.0, 1.1, 1.2, 1.3, 1.4]):
        run_to_end(client, f"done-{i}", scale)
    start(client, "bad")
    response = post(client, 30, "bad", mqe=3.0)
    body = response.json()
    assert body["action"] == "stop", body
    assert body["policy"] == "median"
    assert "p50 of the study's 5 finished runs" in body["reason"]
    # The threshold at 30% progress is the median of the finished runs' scores there.
    expected = 1.2 * (1 + 5 / 30) + 0.2 + 0.5 * 0.1
    assert body["threshold"] == pytest.approx(expected, rel=1e-4)
    start(client, "good")
    assert post(client, 30, "good", mqe=1.0).json()["action"] == "continue"


def test_checkpoint_median_rule_interpolates_between_reported_epochs(client: TestClient) -> None:
    for i, scale in enumerate([1.0, 1.1, 1.2, 1.3, 1.4]):
        run_to_end(client, f"done-{i}", scale)
    # A run of another length reports at 45%: between the finished runs' 30% and 60%.
    start(client, "other", max_epochs=20)
    body = post(client, 9, "other", mqe=1.0).json()
    at_30 = 1.2 * (1 + 5 / 30)
    at_60 = 1.2 * (1 + 5 / 60)
    expected = (at_30 + at_60) / 2 + 0.2 + 0.05
    assert body["threshold"] == pytest.approx(expected, rel=1e-3)
