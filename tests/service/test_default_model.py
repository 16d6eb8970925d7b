"""A fresh deployment decides with the shipped model from its first request."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.main import create_app
from tests.conftest import auth, settings_for

POINT = {"mqe": 1.0, "topographic_error": 0.2, "dead_neuron_ratio": 0.1}


def test_default_model_is_activated_once_and_forecasts_from_the_first_checkpoint(
    database_url: str,
) -> None:
    settings = settings_for(database_url, default_model=True)
    with TestClient(create_app(settings), headers=auth("admin")) as client:
        active = client.get("/v1/models/active").json()
        assert active["version"].startswith("default-lite-")
        assert active["status"] == "published"
        client.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 100})
        first = client.post("/v1/runs/r/checkpoints", json={"epoch": 1, **POINT}).json()
        assert first["policy"] == "warmup"
        assert first["model_version"] == active["version"]
        low, high = first["score_interval"]
        assert low <= first["predicted_score"] <= high
        # Five finished runs: a threshold, but too few good runs to calibrate the model's
        # stops for this study (0.9 needs nine), so it forecasts and does not stop.
        finish_runs(client, range(5))
        early = client.post("/v1/runs/r/checkpoints", json={"epoch": 30, **POINT}).json()
        assert early["policy"] == "warmup", early
        assert "not calibrated for this study yet" in early["reason"]
        assert early["threshold"] is not None
        # Nine more: the study's own evidence calibrates it, and the model answers.
        finish_runs(client, range(5, 14))
        later = client.post("/v1/runs/r/checkpoints", json={"epoch": 40, **POINT}).json()
        assert later["policy"] == "oracle", later
        assert "of the study's unbiased finished runs" in later["reason"]
    # A second start (another replica, a restart) keeps the active choice and adds nothing.
    with TestClient(create_app(settings), headers=auth("admin")) as client:
        models = client.get("/v1/models").json()
        assert len(models["models"]) == 1
        assert models["active"] == active["version"]


def finish_runs(client: TestClient, ids: range) -> None:
    for i in ids:
        client.put(f"/v1/runs/f{i}", json={"study_id": "s", "max_epochs": 10})
        for epoch in (1, 5, 10):
            client.post(f"/v1/runs/f{i}/checkpoints", json={"epoch": epoch, **POINT})
        client.post(f"/v1/runs/f{i}/finish", json={"status": "completed"})


def test_default_model_never_overrides_an_admin_choice(database_url: str) -> None:
    with TestClient(
        create_app(settings_for(database_url, default_model=True)), headers=auth("admin")
    ) as client:
        version = client.get("/v1/models/active").json()["version"]
    # An operator who wants the fallbacks only turns the default off; the registry keeps its
    # choice either way.
    with TestClient(create_app(settings_for(database_url)), headers=auth("admin")) as client:
        assert client.get("/v1/models/active").json()["version"] == version
