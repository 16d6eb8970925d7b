"""Bodies must be JSON, without duplicate keys; every refusal says why and stores nothing."""

from __future__ import annotations

from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}


def test_body_with_a_duplicate_key_is_422(client: TestClient) -> None:
    body = '{"study_id": "s", "max_epochs": 10, "max_epochs": 20}'
    response = client.put("/v1/runs/r1", content=body, headers=JSON)
    assert response.status_code == 422
    assert "duplicate key 'max_epochs'" in response.json()["detail"][0]["msg"]
    assert client.get("/v1/runs/r1").status_code == 404


def test_body_of_another_content_type_is_415(client: TestClient) -> None:
    body = '{"study_id": "s", "max_epochs": 10}'
    response = client.put("/v1/runs/r1", content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    assert client.get("/v1/runs/r1").status_code == 404


def test_body_json_with_charset_is_accepted(client: TestClient) -> None:
    body = '{"study_id": "s", "max_epochs": 10}'
    headers = {"content-type": "application/json; charset=utf-8"}
    assert client.put("/v1/runs/r1", content=body, headers=headers).status_code == 201


def test_body_empty_or_malformed_is_422(client: TestClient) -> None:
    assert client.put("/v1/runs/r1", content=b"", headers=JSON).status_code == 422
    response = client.put("/v1/runs/r1", content=b'{"study_id": ', headers=JSON)
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"][0]["msg"]
    assert client.put("/v1/runs/r1", content=b"[1, 2]", headers=JSON).status_code == 422
    assert client.get("/v1/runs/r1").status_code == 404
