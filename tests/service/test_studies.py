"""Studies: create or update, read with run counts, policy changes only by admins."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import auth


def test_put_study_creates_then_updates(admin: TestClient) -> None:
    created = admin.put("/v1/studies/ea7", json={"description": "EA 7 on iris"})
    assert created.status_code == 201
    assert created.json()["description"] == "EA 7 on iris"
    policy = {"threshold": {"mode": "absolute", "value": 0.8}, "min_progress": 0.2}
    updated = admin.put("/v1/studies/ea7", json={"policy": policy})
    assert updated.status_code == 200
    body = updated.json()
    assert body["description"] == "EA 7 on iris"  # untouched when not sent
    assert body["policy"]["threshold"] == {"mode": "absolute", "value": 0.8}
    assert body["policy"]["min_progress"] == 0.2
    assert body["policy"]["confidence"] == 0.9  # defaults fill the rest
    assert admin.get("/v1/studies/ea7").json() == body


def test_put_study_policy_needs_admin(client: TestClient) -> None:
    response = client.put("/v1/studies/ea7", json={"policy": {"min_progress": 0.3}})
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    assert client.get("/v1/studies/ea7").status_code == 404
    assert client.put("/v1/studies/ea7", json={"description": "ok"}).status_code == 201


def test_put_study_rejects_bad_policies(admin: TestClient) -> None:
    bad = [
        {"threshold": {"mode": "percentile", "value": 120}},
        {"threshold": {"mode": "median"}},
        {"weights": {"mqe": -1}},
        {"weights": {"mqe": "NaN"}},
        {"min_progress": 1.5},
        {"confidence": 0.2},
        {"min_finished_runs": 0},
        {"surprise": 1},
    ]
    for policy in bad:
        response = admin.put("/v1/studies/ea7", json={"policy": policy})
        assert response.status_code == 422, (policy, response.text)
    assert admin.get("/v1/studies/ea7").status_code == 404


def test_list_studies_counts_runs_by_status(client: TestClient) -> None:
    for i in range(3):
        client.put(f"/v1/runs/r{i}", json={"study_id": "s", "max_epochs": 10})
    client.post("/v1/runs/r0/finish", json={"status": "stopped"})
    studies = client.get("/v1/studies").json()["studies"]
    assert [s["study_id"] for s in studies] == ["s"]
    assert studies[0]["runs"] == {
        "running": 2,
        "completed": 0,
        "stopped": 1,
        "failed": 0,
        "total": 3,
    }


def test_study_absolute_threshold_decides_without_finished_runs(admin: TestClient) -> None:
    admin.put("/v1/studies/abs", json={"policy": {"threshold": {"mode": "absolute", "value": 1.0}}})
    admin.put("/v1/runs/r", json={"study_id": "abs", "max_epochs": 10})
    point = {"mqe": 2.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}
    body = admin.post("/v1/runs/r/checkpoints", json={"epoch": 5, **point}).json()
    assert body["action"] == "stop"
    assert body["threshold"] == 1.0
    assert "absolute" in body["reason"]


def test_study_decider_never_keeps_runs_going(admin: TestClient) -> None:
    admin.put("/v1/studies/n", json={"policy": {"decider": "never"}})
    admin.put("/v1/runs/r", json={"study_id": "n", "max_epochs": 10})
    point = {"mqe": 99.0, "topographic_error": 1.0, "dead_neuron_ratio": 1.0}
    body = admin.post("/v1/runs/r/checkpoints", json={"epoch": 5, **point}).json()
    assert (body["action"], body["policy"]) == ("continue", "never")


def test_reader_cannot_write(client: TestClient) -> None:
    reader = auth("reader")
    response = client.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 10}, headers=reader)
    assert response.status_code == 403
    assert client.get("/v1/studies", headers=reader).status_code == 200
