"""A model that reads the run's configuration (feature schema 2), served: each run is forecast
with the `config` its worker sent, on the batch path, after a restart, and by /v1/predict."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from core import bundle, registry
from core.db import Database
from core.features import encode_context
from core.forecast import BundlePredictor
from core.reference import history_array
from service.main import create_app
from tests.conftest import auth, settings_for
from tests.training.conftest import random_bundle

SMALL = {"x": 6, "y": 4, "sigma": 0.8, "learning_rate": 0.05, "topology": "hexagonal"}
LARGE = {"x": 30, "y": 30, "sigma": 9.0, "learning_rate": 0.9, "init": "pca"}
CONFIGS: dict[str, dict[str, Any] | None] = {"small": SMALL, "large": LARGE, "none": None}
POINTS = [
    {"epoch": 1, "mqe": 2.0, "topographic_error": 0.40, "dead_neuron_ratio": 0.30},
    {"epoch": 4, "mqe": 1.5, "topographic_error": 0.30, "dead_neuron_ratio": 0.25},
    {"epoch": 9, "mqe": 1.2, "topographic_error": 0.25, "dead_neuron_ratio": 0.20},
    {"epoch": 20, "mqe": 1.1, "topographic_error": 0.22, "dead_neuron_ratio": 0.15},
]
MAX_EPOCHS = 60
WEIGHTS = (1.0, 1.0, 0.5)  # the default study policy's


def _publish(url: str) -> BundlePredictor:
    artifact = random_bundle("lite", schema=2, seed=4)
    loaded = bundle.load(artifact)
    db = Database.connect(url)
    try:
        with db.writes.begin() as session:
            registry.add_version(
                session,
                version="ctx-v2",
                architecture="lite",
                manifest=loaded.manifest,
                artifact=artifact,
            )
            registry.activate(session, "ctx-v2", by="test")
    finally:
        db.dispose()
    return BundlePredictor("ctx-v2", loaded, cache_runs=0)


def _expected(predictor: BundlePredictor, n: int, config: dict[str, Any] | None) -> float:
    rows = [(p["epoch"], p["mqe"], p["topographic_error"], p["dead_neuron_ratio"]) for p in POINTS]
    history = history_array(rows[:n], MAX_EPOCHS)
    context = encode_context(config, MAX_EPOCHS)
    return predictor.predict(history, WEIGHTS, context).score


def test_each_run_is_forecast_with_its_own_configuration(database_url: str) -> None:
    reference = _publish(database_url)
    settings = settings_for(database_url)
    with TestClient(create_app(settings), headers=auth("worker")) as client:
        for name, config in CONFIGS.items():
            body = {"study_id": "ctx", "max_epochs": MAX_EPOCHS, "config": config}
            assert client.put(f"/v1/runs/{name}", json=body).status_code == 201
        for n, point in enumerate(POINTS[:3], start=1):
            scores = {}
            for name, config in CONFIGS.items():
                decision = client.post(f"/v1/runs/{name}/checkpoints", json=point).json()
                assert decision["model_version"] == "ctx-v2", decision
                scores[name] = decision["predicted_score"]
                assert np.isclose(scores[name], _expected(reference, n, config), atol=1e-5)
            assert len(set(scores.values())) == 3, scores
    # A restart: the runs' states are read back from the database, config included.
    with TestClient(create_app(settings), headers=auth("worker")) as client:
        for name, config in CONFIGS.items():
            decision = client.post(f"/v1/runs/{name}/checkpoints", json=POINTS[3]).json()
            assert np.isclose(
                decision["predicted_score"], _expected(reference, 4, config), atol=1e-5
            )


def test_predict_takes_the_runs_configuration(database_url: str) -> None:
    reference = _publish(database_url)
    body = {
        "max_epochs": MAX_EPOCHS,
        "epochs": [p["epoch"] for p in POINTS[:2]],
        "mqe": [p["mqe"] for p in POINTS[:2]],
        "topographic_error": [p["topographic_error"] for p in POINTS[:2]],
        "dead_neuron_ratio": [p["dead_neuron_ratio"] for p in POINTS[:2]],
    }
    with TestClient(create_app(settings_for(database_url)), headers=auth("worker")) as client:
        for config in (SMALL, LARGE, None):
            sent = body if config is None else {**body, "config": config}
            answer = client.post("/v1/predict", json=sent)
            assert answer.status_code == 200, answer.text
            score = answer.json()["predicted_score"]
            assert np.isclose(score, _expected(reference, 2, config), atol=1e-5)
        deep: dict[str, Any] = {}
        for _ in range(10):
            deep = {"a": deep}
        refused = client.post("/v1/predict", json={**body, "config": deep})
        assert refused.status_code == 422
        assert "nest" in refused.text
        refused = client.post("/v1/predict", json={**body, "config": [1, 2]})
        assert refused.status_code == 422
        for config, says in (  # raw JSON: a client's encoder would refuse to write NaN
            ('{"x": NaN}', "NaN or Infinity"),
            ('{"x": Infinity}', "NaN or Infinity"),
            ('"abc"', "valid dictionary"),
            (json.dumps({"k": "x" * 20_000}), "at most"),
        ):
            text = json.dumps(body)[:-1] + f', "config": {config}}}'
            refused = client.post(
                "/v1/predict", content=text, headers={"content-type": "application/json"}
            )
            assert refused.status_code == 422, (config, refused.text)
            assert refused.json()["detail"][0]["loc"] == ["body", "config"]
            assert says in refused.text
        # Stateless: the same request again gets the same answer.
        again = [client.post("/v1/predict", json={**body, "config": SMALL}).json() for _ in "ab"]
        assert again[0] == again[1]


def test_a_config_the_model_cannot_read_is_stored_and_forecast_as_unknown(
    database_url: str,
) -> None:
    """Free-form JSON, stored as sent; numbers beyond any float or of the wrong type are not
    read (a JSON integer has no bound), never a 500."""
    reference = _publish(database_url)
    odd = {"x": 10**400, "y": "15", "sigma": [1], "learning_rate": None, "topology": 3}
    with TestClient(create_app(settings_for(database_url)), headers=auth("worker")) as client:
        body = {"study_id": "ctx", "max_epochs": MAX_EPOCHS, "config": odd}
        assert client.put("/v1/runs/odd", json=body).status_code == 201
        decision = client.post("/v1/runs/odd/checkpoints", json=POINTS[0])
        assert decision.status_code == 200, decision.text
        assert np.isclose(
            decision.json()["predicted_score"], _expected(reference, 1, None), atol=1e-5
        )
        assert client.get("/v1/runs/odd").json()["config"] == odd
