"""The service's calibrated stops end to end, on both backends: exploration runs are never
stopped, only runs no stopping policy decided are evidence, and the study's own evidence is
what lets the model stop."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from core.calibration import is_exploration
from service.main import create_app
from tests.conftest import auth, settings_for

GOOD = {"mqe": 0.5, "topographic_error": 0.05, "dead_neuron_ratio": 0.0}
BAD = {"mqe": 5.0, "topographic_error": 0.6, "dead_neuron_ratio": 0.5}
EPOCHS = (5, 20, 40, 60, 80, 100)


def set_policy(client: TestClient, study: str, **policy: Any) -> None:
    response = client.put(f"/v1/studies/{study}", json={"policy": policy}, headers=auth("admin"))
    assert response.status_code in (200, 201), response.text


def run_through(client: TestClient, study: str, run_id: str, point: dict[str, float]) -> list[dict]:
    """Post a run's checkpoints until it is stopped or ends; finish it accordingly."""
    client.put(f"/v1/runs/{run_id}", json={"study_id": study, "max_epochs": 100})
    decisions = []
    for epoch in EPOCHS:
        decision = client.post(f"/v1/runs/{run_id}/checkpoints", json={"epoch": epoch, **point})
        assert decision.status_code == 200, decision.text
        decisions.append(decision.json())
        if decisions[-1]["action"] == "stop":
            client.post(f"/v1/runs/{run_id}/finish", json={"status": "stopped"})
            return decisions
    client.post(f"/v1/runs/{run_id}/finish", json={"status": "completed"})
    return decisions


def test_exploration_runs_are_never_stopped_and_say_so(database_url: str) -> None:
    with TestClient(create_app(settings_for(database_url)), headers=auth("worker")) as client:
        set_policy(client, "s", decider="median", exploration=0.5)
        for i in range(6):
            run_through(client, "s", f"good-{i}", GOOD)
        ids = [f"bad-{i}" for i in range(16)]
        explored = {r for r in ids if is_exploration(r, 0.5)}
        assert 0 < len(explored) < len(ids)  # both kinds among them
        for run_id in ids:
            decisions = run_through(client, "s", run_id, BAD)
            late = [d for d in decisions if d["policy"] not in ("warmup", "guard")]
            if run_id in explored:
                assert all(d["action"] == "continue" for d in decisions)
                assert {d["policy"] for d in late} == {"explore"}
                assert "exploration run" in late[0]["reason"]
            else:
                assert decisions[-1]["action"] == "stop" and decisions[-1]["policy"] == "median"
        statuses = {
            r["run_id"]: r["status"]
            for r in client.get("/v1/runs", params={"study_id": "s", "limit": 100}).json()["runs"]
        }
        assert all(statuses[r] == "completed" for r in explored)
        assert all(statuses[r] == "stopped" for r in set(ids) - explored)


def test_only_unbiased_finished_runs_calibrate_the_model(database_url: str) -> None:
    settings = settings_for(database_url, default_model=True)
    with TestClient(create_app(settings), headers=auth("worker")) as client:
        # The first five finished before the median rule had its five finished runs (warm-up
        # decided them: evidence); the next seven the median rule decided past warm-up: they
        # finished because they looked good, so they are survivors, not evidence.
        set_policy(client, "s", decider="median", exploration=0.0)
        for i in range(12):
            run_through(client, "s", f"survivor-{i}", GOOD)
        set_policy(client, "s", decider="auto", exploration=0.0)
        decisions = run_through(client, "s", "probe-0", GOOD)
        late = decisions[-2]
        assert late["policy"] == "warmup" and "not calibrated for this study yet" in late["reason"]
        assert "5 of the 9 unbiased finished runs" in late["reason"]  # not 12
        # probe-0 itself finished uncalibrated (warm-up decided it): evidence. Three more such
        # runs make nine, which calibrate the model for the study, and its own margin decides.
        for i in range(1, 4):
            run_through(client, "s", f"probe-{i}", GOOD)
        decisions = run_through(client, "s", "after", GOOD)
        late = decisions[-2]
        assert late["policy"] == "oracle", late
        assert "of the study's unbiased finished runs" in late["reason"]
        assert late["model_version"] is not None and late["threshold"] is not None
