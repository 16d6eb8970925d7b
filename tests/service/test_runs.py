"""Runs: creation and its idempotency, finishing, reading and paging."""

from __future__ import annotations

from fastapi.testclient import TestClient

BODY = {"study_id": "s1", "max_epochs": 50, "config": {"x": 10, "sigma": 1.5}, "dataset": "iris"}


def test_put_run_creates_then_returns_the_stored_run(client: TestClient) -> None:
    first = client.put("/v1/runs/ea7-g3-i12", json=BODY)
    assert first.status_code == 201
    again = client.put("/v1/runs/ea7-g3-i12", json=BODY)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["status"] == "running"
    assert first.json()["config"] == BODY["config"]


def test_a_config_holding_nul_is_stored_and_read_back_as_sent(client: TestClient) -> None:
    """A config is JSON, where NUL is an escape (\\u0000): both backends store it as sent.
    Free-text fields, which would store the raw character, refuse it (test_hostile_input)."""
    body = {**BODY, "config": {"note\x00key": "a\x00b", "x": 10}}
    # The study known first: on Postgres the start then takes the one-statement batch.
    assert client.put("/v1/runs/r-first", json=BODY).status_code == 201
    first = client.put("/v1/runs/r-nul", json=body)
    assert first.status_code == 201, first.text
    assert first.json()["config"] == body["config"]
    assert client.get("/v1/runs/r-nul").json()["config"] == body["config"]
    assert client.put("/v1/runs/r-nul", json=body).status_code == 200  # the same body again


def test_put_run_with_another_body_conflicts(client: TestClient) -> None:
    client.put("/v1/runs/r1", json=BODY)
    response = client.put("/v1/runs/r1", json={**BODY, "max_epochs": 51})
    assert response.status_code == 409
    assert "another body" in response.json()["detail"]
    assert client.get("/v1/runs/r1").json()["max_epochs"] == 50


def test_put_run_creates_an_unknown_study_with_the_default_policy(client: TestClient) -> None:
    client.put("/v1/runs/r1", json={**BODY, "study_id": "fresh"})
    study = client.get("/v1/studies/fresh").json()
    assert study["policy"]["threshold"] == {"mode": "percentile", "value": 50.0}
    assert study["runs"]["running"] == 1


def test_post_run_picks_an_id(client: TestClient) -> None:
    response = client.post("/v1/runs", json=BODY)
    assert response.status_code == 201
    run_id = response.json()["run_id"]
    assert client.get(f"/v1/runs/{run_id}").status_code == 200


def test_put_run_rejects_bad_ids_and_bodies(client: TestClient) -> None:
    assert client.put("/v1/runs/..%2Fetc", json=BODY).status_code in (404, 422)
    assert client.put("/v1/runs/a%20b", json=BODY).status_code == 422
    assert client.put("/v1/runs/" + "x" * 200, json=BODY).status_code == 422
    assert client.put("/v1/runs/r1", json={**BODY, "max_epochs": 0}).status_code == 422
    assert client.put("/v1/runs/r1", json={**BODY, "max_epochs": "50"}).status_code == 422
    assert client.put("/v1/runs/r1", json={**BODY, "study_id": "a/b"}).status_code == 422
    deep: dict = {}
    node = deep
    for _ in range(20):
        node["k"] = {}
        node = node["k"]
    assert client.put("/v1/runs/r1", json={**BODY, "config": deep}).status_code == 422
    assert client.get("/v1/runs/r1").status_code == 404


def test_finish_run_defaults_final_to_the_last_checkpoint(client: TestClient) -> None:
    client.put("/v1/runs/r1", json=BODY)
    point = {"epoch": 7, "mqe": 0.5, "topographic_error": 0.1, "dead_neuron_ratio": 0.2}
    client.post("/v1/runs/r1/checkpoints", json=point)
    response = client.post("/v1/runs/r1/finish", json={"status": "stopped"})
    assert response.status_code == 200
    assert response.json()["final"] == {k: point[k] for k in point if k != "epoch"}


def test_finish_run_twice_is_idempotent_and_a_change_conflicts(client: TestClient) -> None:
    client.put("/v1/runs/r1", json=BODY)
    final = {"mqe": 0.4, "topographic_error": 0.1, "dead_neuron_ratio": 0.0}
    first = client.post("/v1/runs/r1/finish", json={"status": "failed", "final": final})
    again = client.post("/v1/runs/r1/finish", json={"status": "failed", "final": final})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    other = client.post("/v1/runs/r1/finish", json={"status": "completed", "final": final})
    assert other.status_code == 409
    assert client.get("/v1/runs/r1").json()["status"] == "failed"


def test_finish_run_rejects_bad_bodies(client: TestClient) -> None:
    client.put("/v1/runs/r1", json=BODY)
    assert client.post("/v1/runs/r1/finish", json={"status": "done"}).status_code == 422
    bad_final = {"mqe": -1, "topographic_error": 0.1, "dead_neuron_ratio": 0.0}
    response = client.post("/v1/runs/r1/finish", json={"status": "stopped", "final": bad_final})
    assert response.status_code == 422
    assert client.get("/v1/runs/r1").json()["status"] == "running"
    assert client.post("/v1/runs/zz/finish", json={"status": "stopped"}).status_code == 404


def test_get_run_has_checkpoints_and_decisions(client: TestClient) -> None:
    client.put("/v1/runs/r1", json=BODY)
    for epoch in (1, 2, 4):
        client.post(
            "/v1/runs/r1/checkpoints",
            json={"epoch": epoch, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1},
        )
    run = client.get("/v1/runs/r1").json()
    assert [c["epoch"] for c in run["checkpoints"]] == [1, 2, 4]
    assert run["checkpoints"][2]["progress"] == 4 / 50
    assert run["checkpoints"][0]["decision"]["action"] == "continue"
    assert run["last_epoch"] == 4 and run["n_checkpoints"] == 3


def test_list_runs_pages_with_a_cursor_and_filters(client: TestClient) -> None:
    for i in range(7):
        client.put(f"/v1/runs/r{i}", json={**BODY, "study_id": "a" if i % 2 else "b"})
    client.post("/v1/runs/r0/finish", json={"status": "failed"})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/runs", params=params).json()
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"r{i}" for i in reversed(range(7))]
    only_a = client.get("/v1/runs", params={"study_id": "a"}).json()["runs"]
    assert {r["run_id"] for r in only_a} == {"r1", "r3", "r5"}
    failed = client.get("/v1/runs", params={"status": "failed"}).json()["runs"]
    assert [r["run_id"] for r in failed] == ["r0"]
    assert client.get("/v1/runs", params={"cursor": "garbage!"}).status_code == 422
    assert client.get("/v1/runs", params={"limit": 0}).status_code == 422
    assert client.get("/v1/runs", params={"study_id": "nope"}).status_code == 404


def test_finish_run_stores_non_finite_finals_as_null_and_a_retry_gets_the_same_answer(
    client: TestClient,
) -> None:
    client.put("/v1/runs/r1", json=BODY)
    client.post(
        "/v1/runs/r1/checkpoints",
        json={"epoch": 3, "mqe": 0.5, "topographic_error": 0.1, "dead_neuron_ratio": 0.2},
    )
    final = '{"mqe": NaN, "topographic_error": null, "dead_neuron_ratio": 0.3}'
    body = f'{{"status": "failed", "final": {final}}}'
    headers = {"content-type": "application/json"}
    first = client.post("/v1/runs/r1/finish", content=body, headers=headers)
    assert first.status_code == 200, first.text
    expected = {"mqe": None, "topographic_error": None, "dead_neuron_ratio": 0.3}
    assert first.json()["final"] == expected
    again = client.post("/v1/runs/r1/finish", content=body, headers=headers)
    assert again.status_code == 200 and again.json() == first.json()
    stored = client.get("/v1/runs/r1").json()
    assert (stored["status"], stored["final"], stored["last_epoch"]) == ("failed", expected, 3)
    assert stored["finished_at"] == first.json()["finished_at"]
