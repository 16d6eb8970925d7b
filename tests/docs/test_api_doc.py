"""docs/api.md against the app itself: every operation of the OpenAPI document has a heading
there, every heading names a route the app serves, and every field of the request bodies,
the study policy and the Decision is named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.main import create_app
from tests.conftest import settings_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
# An operation's heading: ### `METHOD /path`
HEADING = re.compile(r"^#{2,4} `(GET|PUT|POST|PATCH|DELETE) (/[^`\s]*)`\s*$", re.MULTILINE)
METHODS = ("get", "put", "post", "patch", "delete")
# The bodies a worker or an admin sends, and the answer every checkpoint gets.
MAIN_BODIES = ("CheckpointIn", "RunCreate", "RunFinish", "StudyPut", "StudyPolicy", "PredictIn")
POLICIES = ("guard", "warmup", "explore", "oracle", "median", "never")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    # The document is built from the routes alone: no lifespan, so no database is opened.
    url = f"sqlite:///{tmp_path_factory.mktemp('doc')}/unused.db"
    return create_app(settings_for(url))


@pytest.fixture(scope="module")
def openapi(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def _operations(openapi: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi["paths"].items()
        for method in item
        if method in METHODS
    }


def _documented(doc: str) -> set[tuple[str, str]]:
    return {(m, p) for m, p in HEADING.findall(doc)}


def _unlisted_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Routes the app serves but keeps out of its OpenAPI document (the dashboard page)."""
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and not route.include_in_schema
        for method in route.methods or ()
    }


def _fields(openapi: dict[str, Any], name: str, seen: set[str] | None = None) -> set[str]:
    """The property names of a component schema and of the schemas it refers to."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    schema = openapi["components"]["schemas"][name]
    names = set(schema.get("properties", {}))
    for ref in re.findall(r"#/components/schemas/(\w+)", str(schema)):
        names |= _fields(openapi, ref, seen)
    return names


def test_api_doc_documents_every_operation(openapi: dict[str, Any], doc: str) -> None:
    operations = _operations(openapi)
    assert len(operations) >= 15  # the document really was built from the routers
    missing = sorted(operations - _documented(doc))
    assert not missing, f"operations without a heading in docs/api.md: {missing}"


def test_api_doc_documents_only_operations_that_exist(
    app: FastAPI, openapi: dict[str, Any], doc: str
) -> None:
    documented = _documented(doc)
    assert ("POST", "/v1/runs/{run_id}/checkpoints") in documented
    unknown = sorted(documented - _operations(openapi) - _unlisted_routes(app))
    assert not unknown, f"docs/api.md documents operations the app does not serve: {unknown}"


def test_api_doc_names_every_field_of_the_main_bodies(openapi: dict[str, Any], doc: str) -> None:
    request_bodies = {
        ref.rsplit("/", 1)[-1]
        for item in openapi["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for ref in re.findall(r"#/components/schemas/(\w+)", str(operation.get("requestBody")))
    }
    assert {"CheckpointIn", "RunCreate", "StudyPut"} <= request_bodies
    for body in sorted(request_bodies | set(MAIN_BODIES) | {"Decision"}):
        fields = _fields(openapi, body)
        assert fields, body
        unnamed = sorted(f for f in fields if f"`{f}`" not in doc)
        assert not unnamed, f"{body}: fields not named in docs/api.md: {unnamed}"


def test_api_doc_names_every_decider_and_policy(openapi: dict[str, Any], doc: str) -> None:
    deciders = openapi["components"]["schemas"]["StudyPolicy"]["properties"]["decider"]["enum"]
    for name in (*deciders, *POLICIES):
        assert f"`{name}`" in doc, name
    # the contract's reason for a diverged map, which workers match on
    assert "`diverged`" in doc
