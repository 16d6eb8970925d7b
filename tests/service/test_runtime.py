"""Process-level tuning that the service applies at start-up."""

from __future__ import annotations

import gc

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Match, Mount, Route

from service.main import GC_YOUNG_THRESHOLD, create_app
from tests.conftest import auth, settings_for


def test_start_up_freezes_its_heap_and_still_collects_what_requests_leave(sqlite_url: str) -> None:
    threshold = gc.get_threshold()
    app = create_app(settings_for(sqlite_url, gc_freeze=True))
    try:
        with TestClient(app, headers=auth("worker")) as client:
            assert gc.get_freeze_count() > 10_000  # modules, routes, validators...
            assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
            client.put("/v1/runs/r", json={"study_id": "s", "max_epochs": 5})
            assert client.post(
                "/v1/runs/r/checkpoints",
                json={"epoch": 1, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.0},
            ).json()["action"] in ("continue", "stop")

            class Cycle:
                def __init__(self) -> None:
                    self.me = self

            Cycle()  # garbage made after start-up is still found by a collection
            assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_workers_routes_are_matched_first_and_the_docs_last(sqlite_url: str) -> None:
    """Routes are tried in order, one regex each: every route ahead of the checkpoint route
    costs each checkpoint a miss. The docs still answer from the end of the table."""
    app = create_app(settings_for(sqlite_url))
    checkpoint = {"type": "http", "method": "POST", "path": "/v1/runs/r/checkpoints"}
    first = app.router.routes[0]
    # The route itself, not FastAPI 0.165's wrapper of an included router (two walks a request)
    assert isinstance(first, APIRoute)
    assert first.path == "/v1/runs/{run_id}/checkpoints"
    match, _ = first.matches({**checkpoint, "root_path": "", "headers": []})
    assert match == Match.FULL
    assert all(isinstance(route, APIRoute | Route | Mount) for route in app.router.routes)
    paths = [getattr(route, "path", None) for route in app.router.routes]
    assert paths[-4:] == ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"]
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 200
        assert "/v1/runs/{run_id}/checkpoints" in client.get("/openapi.json").json()["paths"]


def test_the_benchmarks_bare_twins_are_matched_first_and_validate_like_the_real_route(
    sqlite_url: str,
) -> None:
    """bench/replay.py divides the service's throughput by its bare twins'. A twin matched
    after the service's routes pays their misses and flatters the ratio (bench/RESULTS-
    service.md, sixth pass); twins walked one by one before them cost each of the service's
    requests three misses. Under a Mount, first, the service's requests pay one prefix check."""
    from bench.bare_app import create

    app = create(settings_for(sqlite_url))
    first, second = app.router.routes[:2]
    assert isinstance(first, Mount)
    scope = {"type": "http", "method": "POST", "path": "/bench/bare/r/checkpoints"}
    match, _ = first.matches({**scope, "root_path": "", "headers": []})
    assert match == Match.FULL
    real = {"type": "http", "method": "POST", "path": "/v1/runs/r/checkpoints"}
    assert first.matches({**real, "root_path": "", "headers": []})[0] == Match.NONE
    assert second.matches({**real, "root_path": "", "headers": []})[0] == Match.FULL
    body = {"epoch": 1, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.0}
    with TestClient(app, headers=auth("worker")) as client:
        assert client.post("/bench/bare/r/checkpoints", json=body).json()["action"] == "continue"
        run = client.put("/bench/bare/r", json={"study_id": "s", "max_epochs": 1}).json()
        assert run["run_id"] == "bare"
        assert client.post("/bench/bare/r/finish", json={"status": "stopped"}).status_code == 200
        as_text = client.post(
            "/bench/bare/r/checkpoints", content="{}", headers={"content-type": "text/plain"}
        )
        assert as_text.status_code == 415  # the strict JSON route class, as the real route
        twice = client.post(
            "/bench/bare/r/checkpoints",
            content='{"epoch": 1, "epoch": 2}',
            headers={"content-type": "application/json"},
        )
        assert twice.status_code == 422
        anonymous = client.post(
            "/bench/bare/r/checkpoints", json=body, headers={"authorization": ""}
        )
        assert anonymous.status_code == 401
        assert client.post("/bench/bare/r/checkpoints", json={**body, "mqe": -1}).status_code == 422
