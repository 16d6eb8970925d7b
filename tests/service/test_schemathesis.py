"""schemathesis over the app's own OpenAPI document: every operation, bounded examples.

A real app (lifespan, a real SQLite file and real Postgres) with an admin token. Every
response must be a non-5xx that the document describes: status code, content type, headers
and body schema. Each operation runs schema-valid data (positive) and schema-breaking data
(negative), once with generated path ids and once aimed at a stored run, study and model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as openapi_checks

from core import registry
from service.main import create_app
from tests.conftest import TOKENS, _truncate, auth, settings_for

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "30"))
CHECKS = [
    st_checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
]
ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}
# Path ids of stored rows, so that generated bodies reach the store and the policies.
STORED_IDS = {"run_id": "seeded-run", "study_id": "seeded", "version": "seeded-model"}
SEEDED_RUN = {"study_id": "seeded", "max_epochs": 100, "config": {"x": 8}, "dataset": "iris"}


def _operations() -> list[tuple[str, str]]:
    document = create_app(settings_for("sqlite:///unused.db")).openapi()
    return [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    ]


OPERATIONS = _operations()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[FastAPI]:
    """One app per backend for the module, with a stored study, run, checkpoint and model, and
    the shipped model active."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("schemathesis") / "oracle.db"
        shutil.copy(sqlite_template, path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_server_url")
        _truncate(url)
    # The shipped model active: a valid /v1/predict body gets a forecast, whose schema is
    # checked too (without one, every valid body got the documented 503).
    app = create_app(settings_for(url, default_model=True))
    with TestClient(app, headers=auth("admin")) as client:
        client.put("/v1/runs/seeded-run", json=SEEDED_RUN).raise_for_status()
        point = {"epoch": 1, "mqe": 1.0, "topographic_error": 0.2, "dead_neuron_ratio": 0.1}
        client.post("/v1/runs/seeded-run/checkpoints", json=point).raise_for_status()
        with app.state.oracle.db.writes.begin() as session:
            registry.add_version(
                session,
                version="seeded-model",
                architecture="lite",
                manifest={"metrics": {"mae": 0.1}},
                artifact=b"not a model",
            )
        yield app
    if request.param == "postgres":
        _truncate(url)


@pytest.fixture(scope="module")
def api_schema(live_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", live_app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("stored", [False, True], ids=["generated-ids", "stored-ids"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_schemathesis_operation_conforms(
    api_schema: Any, method: str, path: str, stored: bool, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    names = {p.name for p in operation.path_parameters}
    if stored and not names:
        pytest.skip("no path parameters to aim at stored rows")
    fixed = {k: v for k, v in STORED_IDS.items() if k in names} if stored else None
    free_inputs = len(list(operation.iter_parameters())) - len(fixed or {}) + len(operation.body)
    if mode == GenerationMode.NEGATIVE and free_inputs == 0:
        pytest.skip("nothing to make invalid: no free parameters and no body")
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(headers=ADMIN, checks=CHECKS)

    check()
