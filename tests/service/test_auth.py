"""Every endpoint with no token, a wrong token and each role."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.conftest import auth, settings_for

RUN = {"study_id": "s", "max_epochs": 10}
POINT = {"epoch": 1, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}
PREDICT = {
    "max_epochs": 10,
    "epochs": [1],
    "mqe": [1.0],
    "topographic_error": [0.1],
    "dead_neuron_ratio": [0.1],
}

# (method, path, body, the weakest role allowed)
ENDPOINTS = [
    ("GET", "/v1/studies", None, "reader"),
    ("GET", "/v1/studies/s", None, "reader"),
    ("PUT", "/v1/studies/s2", {"description": "x"}, "worker"),
    ("PUT", "/v1/studies/s3", {"policy": {"min_progress": 0.2}}, "admin"),
    ("GET", "/v1/runs", None, "reader"),
    ("GET", "/v1/runs/r", None, "reader"),
    ("PUT", "/v1/runs/r2", RUN, "worker"),
    ("POST", "/v1/runs", RUN, "worker"),
    ("POST", "/v1/runs/r/checkpoints", POINT, "worker"),
    ("POST", "/v1/runs/r/finish", {"status": "stopped"}, "worker"),
    ("POST", "/v1/predict", PREDICT, "worker"),
    ("GET", "/v1/models", None, "reader"),
    ("GET", "/v1/models/active", None, "reader"),
    ("POST", "/v1/models/v1/activate", None, "admin"),
    ("GET", "/v1/dashboard/summary", None, "reader"),
]
RANK = {"reader": 1, "worker": 2, "admin": 3}


@pytest.fixture
def app_client(sqlite_url: str) -> TestClient:
    with TestClient(create_app(settings_for(sqlite_url))) as c:
        c.put("/v1/runs/r", json=RUN, headers=auth("worker"))
        yield c  # type: ignore[misc]


@pytest.mark.parametrize(("method", "path", "body", "weakest"), ENDPOINTS)
def test_auth_every_endpoint_by_role(
    app_client: TestClient, method: str, path: str, body: object, weakest: str
) -> None:
    none = app_client.request(method, path, json=body)
    assert none.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    wrong = app_client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    for role, rank in RANK.items():
        response = app_client.request(method, path, json=body, headers=auth(role))
        if rank < RANK[weakest]:
            assert response.status_code == 403, (role, response.text)
        else:
            assert response.status_code not in (401, 403), (role, response.text)


def test_auth_health_endpoints_are_open(app_client: TestClient) -> None:
    assert app_client.get("/healthz").status_code == 200
    assert app_client.get("/readyz").status_code == 200
    assert app_client.get("/metrics").status_code == 200


def test_auth_token_file(sqlite_url: str, tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "tokens"  # type: ignore[operator]
    path.write_text("# tokens\nworker:from-file\n")
    app = create_app(settings_for(sqlite_url, tokens=None, tokens_file=path))
    with TestClient(app) as c:
        ok = c.get("/v1/studies", headers={"Authorization": "Bearer from-file"})
        assert ok.status_code == 200
        assert c.get("/v1/studies").status_code == 401


def test_auth_bad_token_config_is_refused_at_start(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="unknown role"):
        create_app(settings_for(sqlite_url, tokens="root:x"))
    with pytest.raises(ValueError, match="role:token"):
        create_app(settings_for(sqlite_url, tokens="worker"))
