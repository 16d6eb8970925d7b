"""/healthz and /readyz: ready only while the database answers with its schema at head."""

from __future__ import annotations

from fastapi.testclient import TestClient

from core.schema import upgrade
from migrations import HEAD
from service.main import create_app
from tests.conftest import set_alembic_version, settings_for


def test_readyz_is_ready_at_head_and_not_while_the_schema_is_behind_or_ahead(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    upgrade(url)
    with TestClient(create_app(settings_for(url))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["schema"] == HEAD and ready.json()["database"] == "ok"
        set_alembic_version(url, None)  # someone downgraded it under the running service
        behind = client.get("/readyz")
        assert behind.status_code == 503, behind.text
        assert behind.headers["retry-after"]
        detail = behind.json()["detail"]
        assert "not at head" in detail and "no schema" in detail, detail
        assert client.get("/healthz").status_code == 200  # alive all the same
        upgrade(url)
        assert client.get("/readyz").status_code == 200
        set_alembic_version(url, "9999_newer")
        ahead = client.get("/readyz")
        assert ahead.status_code == 503
        assert ahead.json()["schema"] == "9999_newer"
        assert "9999_newer" in ahead.json()["detail"] and "ahead" in ahead.json()["detail"]
