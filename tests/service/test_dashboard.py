"""The dashboard: the page and its assets are served, the summary's figures match the data
created through the API, and (slow) a real Chromium renders the page from a real service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from core import bundle, registry
from core.db import Database
from core.features import N_FEATURES
from service.main import create_app
from tests.conftest import TOKENS, auth, free_port, oracle_bin, settings_for

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ASSETS = ("app.js", "api.js", "charts.js", "dashboard.css", "chart.umd.min.js", "NOTICE")


def _checkpoint(epoch: int, wall_s: float | None = None, mqe: float = 1.0) -> dict[str, Any]:
    point: dict[str, Any] = {
        "epoch": epoch,
        "mqe": mqe,
        "topographic_error": 0.2,
        "dead_neuron_ratio": 0.1,
    }
    if wall_s is not None:
        point["wall_s"] = wall_s
    return point


def _run(
    client: TestClient,
    run_id: str,
    study_id: str,
    max_epochs: int,
    checkpoints: list[dict[str, Any]],
    finish: str | None,
) -> None:
    body = {"study_id": study_id, "max_epochs": max_epochs}
    assert client.put(f"/v1/runs/{run_id}", json=body).status_code == 201
    for point in checkpoints:
        assert client.post(f"/v1/runs/{run_id}/checkpoints", json=point).status_code == 200
    if finish is not None:
        response = client.post(f"/v1/runs/{run_id}/finish", json={"status": finish})
        assert response.status_code == 200


# --- the page and its assets -----------------------------------------------------------------


def test_dashboard_page_is_served_without_a_token(client: TestClient) -> None:
    response = client.get("/", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    referenced = re.findall(r'(?:src|href)="/static/([^"]+)"', response.text)
    assert {"app.js", "dashboard.css", "chart.umd.min.js", "NOTICE"} <= set(referenced)
    for name in referenced:
        assert client.get(f"/static/{name}").status_code == 200, name


def test_dashboard_assets_are_served_with_their_types(client: TestClient) -> None:
    for name in ASSETS:
        response = client.get(f"/static/{name}", headers={"Authorization": ""})
        assert response.status_code == 200, name
        assert response.content, name
    assert "javascript" in client.get("/static/app.js").headers["content-type"]
    assert "text/css" in client.get("/static/dashboard.css").headers["content-type"]
    assert "Chart.js v4" in client.get("/static/chart.umd.min.js").text[:200]
    assert "MIT License" in client.get("/static/NOTICE").text


def test_dashboard_assets_stay_inside_the_static_folder(client: TestClient) -> None:
    for path in ("/static/../api/dashboard.py", "/static/%2e%2e/index.html", "/static/nope.js"):
        assert client.get(path).status_code == 404, path


def test_dashboard_summary_needs_the_reader_role(app_settings: Any) -> None:
    with TestClient(create_app(app_settings)) as anonymous:
        assert anonymous.get("/v1/dashboard/summary").status_code == 401
        response = anonymous.get("/v1/dashboard/summary", headers=auth("reader"))
        assert response.status_code == 200
        assert response.json()["studies"] == []


def test_dashboard_is_open_with_auth_off(sqlite_url: str) -> None:
    with TestClient(create_app(settings_for(sqlite_url, tokens=None))) as anonymous:
        assert anonymous.get("/").status_code == 200
        assert anonymous.get("/v1/dashboard/summary").status_code == 200


# --- the summary's figures -------------------------------------------------------------------


def test_dashboard_summary_counts_runs_epochs_and_time_saved(client: TestClient) -> None:
    # Study a: one run of each status; wall_s is seconds since the run started.
    _run(client, "a-stopped", "a", 100, [_checkpoint(10, 2.0), _checkpoint(20, 4.0)], "stopped")
    _run(client, "a-done", "a", 50, [_checkpoint(25, 5.0), _checkpoint(50, 10.0)], "completed")
    _run(client, "a-running", "a", 40, [_checkpoint(0), _checkpoint(4)], None)
    _run(client, "a-failed", "a", 30, [_checkpoint(3, 1.5)], "failed")
    # Study b: a run stopped before any checkpoint and without wall times.
    _run(client, "b-stopped", "b", 10, [], "stopped")
    assert client.put("/v1/studies/c", json={"description": "no runs yet"}).status_code == 201

    response = client.get("/v1/dashboard/summary", headers=auth("reader"))
    assert response.status_code == 200
    by_id = {s["study_id"]: s for s in response.json()["studies"]}
    assert list(by_id) == ["a", "b", "c"]

    a = by_id["a"]
    assert a["runs"] == {"running": 1, "completed": 1, "stopped": 1, "failed": 1, "total": 4}
    assert a["epochs_planned"] == 100 + 50 + 40 + 30
    assert a["epochs_run"] == 20 + 50 + 4 + 3
    assert a["epochs_saved"] == 100 - 20
    assert a["epochs_planned_ended"] == 100 + 50
    assert a["saved_share"] == pytest.approx(80 / 150)
    assert a["wall_s_run"] == pytest.approx(4.0 + 10.0 + 1.5)
    assert a["wall_s_saved"] == pytest.approx(4.0 / 20 * 80)  # 0.2 s per epoch x 80 epochs
    assert a["timed_stopped_runs"] == 1

    # Decisions agree with the ones the API shows run by run.
    shown: dict[tuple[str, str], int] = {}
    for run_id in ("a-stopped", "a-done", "a-running", "a-failed"):
        for point in client.get(f"/v1/runs/{run_id}").json()["checkpoints"]:
            key = (point["decision"]["policy"], point["decision"]["action"])
            shown[key] = shown.get(key, 0) + 1
    assert {(d["policy"], d["action"]): d["count"] for d in a["decisions"]} == shown
    assert sum(d["count"] for d in a["decisions"]) == 7

    b = by_id["b"]
    assert b["runs"]["stopped"] == 1
    assert (b["epochs_saved"], b["epochs_run"], b["saved_share"]) == (10, 0, 1.0)
    assert (b["wall_s_saved"], b["timed_stopped_runs"], b["decisions"]) == (0.0, 0, [])

    c = by_id["c"]
    assert c["runs"]["total"] == 0
    assert (c["epochs_planned"], c["saved_share"], c["wall_s_run"]) == (0, None, 0.0)


# --- a real browser against a real service ---------------------------------------------------


def _serve(database_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ORACLE_TOKENS": ",".join(f"{role}:{token}" for role, token in TOKENS.items()),
        "ORACLE_MODEL_POLL_S": "0.5",
        "ORACLE_REFERENCE_REFRESH_S": "0",
    }
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [oracle_bin(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"oracle serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"oracle serve did not answer within 30 s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _publish_tiny_model(database_url: str) -> str:
    """A real bundle (one dense layer, no training) registered and made active, beside a
    rejected one. It forecasts each final as the current value with a spread, so the oracle
    policy answers with forecasts and intervals; its evaluation figures are made up for the page.
    """
    levels = [0.1, 0.5, 0.9]
    bias = np.array([-0.35, -0.2, -0.05, -0.08, -0.03, 0.01, -0.05, 0.0, 0.04])
    weights = {"0.kernel": np.zeros((N_FEATURES, 9)), "0.bias": bias}
    manifest = {
        "architecture": {"name": "tiny", "n_inputs": N_FEATURES, "layers": [
            {"kind": "dense", "units": 9, "activation": "linear"}]},
        "quantile_levels": levels,
        "interval_scale": 1.0,
        "metrics": {
            "prediction": {
                "n_runs": 60,
                "coverage_80": 0.78,
                "by_progress": {
                    f"{p}%": {"score_mae": mae, "coverage_80": cov, "n_runs": 60}
                    for p, mae, cov in ((10, 0.31, 0.7), (20, 0.22, 0.76), (30, 0.17, 0.8),
                                        (50, 0.1, 0.83))
                },
            },
            "backtest": {
                name: {"epochs_saved": saved, "recall_best10": r10, "recall_best25": r25,
                       "accuracy": acc, "regret": {"iris": 0.0}, "n_runs": 60, "n_stopped": 20}
                for name, saved, r10, r25, acc in (
                    ("oracle", 0.46, 0.95, 0.9, 0.81), ("never", 0.0, 1.0, 1.0, 0.5),
                    ("median", 0.38, 0.8, 0.78, 0.7), ("asha", 0.55, 0.6, 0.62, 0.66),
                    ("origin", 0.3, 0.9, 0.85, 0.64))
            },
            "gate": {"oracle_utility": 0.41, "median_utility": 0.28, "recall_penalty": 1.0},
        },
    }  # fmt: skip
    artifact, stored = bundle.dump(manifest, weights)
    db = Database.connect(database_url)
    try:
        with db.writes.begin() as session:
            old = {**stored, "metrics": {"gate": {"oracle_utility": 0.2, "median_utility": 0.25}}}
            registry.add_version(
                session, version="v1-rejected", architecture="tiny", manifest=old,
                artifact=artifact, status="rejected", reason="below the median rule",
            )  # fmt: skip
            registry.add_version(
                session, version="v2-tiny", architecture="tiny", manifest=stored,
                artifact=artifact, status="published",
            )  # fmt: skip
            registry.activate(session, "v2-tiny", by="test")
    finally:
        db.dispose()
    return "v2-tiny"


def _report(
    http: httpx.Client, record: dict[str, Any], n_checkpoints: int | None
) -> dict[str, Any]:
    """Start one run and send its checkpoints until the service says stop; the last decision."""
    body = {key: record[key] for key in ("max_epochs", "config", "dataset")}
    body["study_id"] = f"ea-{record['dataset']}"
    assert http.put(f"/v1/runs/{record['run_id']}", json=body).status_code == 201
    decision: dict[str, Any] = {}
    for point in record["checkpoints"][:n_checkpoints]:
        response = http.post(f"/v1/runs/{record['run_id']}/checkpoints", json=point)
        assert response.status_code == 200, response.text
        decision = response.json()
        if decision["action"] == "stop":
            break
    return decision


def _seed(url: str, data_file: Path, n_runs: int = 60) -> str:
    """Real runs from the shared data through the HTTP API, one study per data set: completed
    and stopped runs, the last one left running. Returns a run the model stopped late enough
    to have a curve."""
    records = [json.loads(line) for line in data_file.read_text().splitlines()[:n_runs]]
    shown: str | None = None
    headers = {"Authorization": f"Bearer {TOKENS['worker']}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        for record in records[:-1]:
            decision = _report(http, record, None)
            status = "stopped" if decision["action"] == "stop" else "completed"
            finish = http.post(f"/v1/runs/{record['run_id']}/finish", json={"status": status})
            assert finish.status_code == 200, finish.text  # the final defaults to the last point
            if status == "stopped" and decision["policy"] == "oracle" and decision["epoch"] >= 4:
                shown = shown or record["run_id"]
        _report(http, records[-1], 6)
    assert shown is not None, "the model stopped no run after its fourth epoch"
    return shown


@pytest.fixture
def served(tmp_path: Path, sqlite_template: Path, data_file: Path) -> Iterator[tuple[str, str]]:
    db = tmp_path / "oracle.db"
    shutil.copy(sqlite_template, db)
    database_url = f"sqlite:///{db}"
    _publish_tiny_model(database_url)
    proc, url = _serve(database_url, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/readyz").json().get("model_version") != "v2-tiny":
            if time.monotonic() > deadline:
                pytest.fail("the service did not load the active model")
            time.sleep(0.1)
        stopped = _seed(url, data_file)
        yield url, stopped
    finally:
        _stop(proc)


def _canvas_sizes(page: Any, selector: str) -> list[tuple[float, float]]:
    return [(box["width"], box["height"]) for box in (
        c.bounding_box() for c in page.query_selector_all(selector)) if box]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dashboard_renders_in_chromium(served: tuple[str, str]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: pip install playwright (no browser download)"
        )
    url, stopped_run = served
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))

            page.goto(f"{url}/?token={TOKENS['reader']}")
            page.wait_for_selector("#runs-body tr[data-run]")
            assert "token=" not in page.url, "the token must leave the address bar"
            assert page.locator("#studies .card").count() == 4  # iris, wine, cancer, digits
            assert page.locator("#runs-body tr[data-run]").count() == 20
            for chart in ("epochs", "decisions", "backtest", "errors", "gate"):
                box = page.locator(f'canvas[data-chart="{chart}"]').bounding_box()
                assert box and box["width"] > 100 and box["height"] > 100, chart
            assert page.locator("#models .card").count() == 2
            assert "active" in page.locator('#models .card[data-version="v2-tiny"]').inner_text()

            page.click("#next")
            page.wait_for_selector("#page-label:has-text('page 2')")
            page.wait_for_selector("#runs-body tr[data-run]")
            study = httpx.get(f"{url}/v1/runs/{stopped_run}", headers=auth("reader")).json()
            page.select_option("#filter-study", study["study_id"])
            page.wait_for_selector("#page-label:has-text('page 1')")
            page.select_option("#filter-status", "stopped")
            page.wait_for_selector(f'#runs-body tr[data-run="{stopped_run}"]')
            page.click(f'#runs-body tr[data-run="{stopped_run}"]')
            page.wait_for_selector("#run-detail:not([hidden])")
            page.wait_for_function("document.querySelector('#h-run').textContent.includes(" +
                                   json.dumps(stopped_run) + ")")  # fmt: skip
            sizes = _canvas_sizes(page, "#run-detail canvas")
            assert len(sizes) == 4 and all(w > 100 and h > 100 for w, h in sizes), sizes
            assert "stop" in page.locator("#run-reason").inner_text()
            drawn = page.evaluate(
                """() => [...document.querySelectorAll('#run-detail canvas')].map((c) => {
                    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let ink = 0;
                    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) ink++;
                    return ink;
                })"""
            )
            assert all(ink > 2000 for ink in drawn), drawn  # axes, lines and markers drawn

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            page.locator("#run-detail").screenshot(path=str(ARTIFACTS / "dashboard-run.png"))

            # A fresh session without a token gets the login form, then the data. (Its first
            # request is answered 401, which Chromium logs: only uncaught errors count here.)
            fresh = browser.new_context().new_page()
            fresh.on("pageerror", lambda e: problems.append(f"uncaught after login: {e}"))
            fresh.goto(url)
            fresh.wait_for_selector("#login:not([hidden])")
            fresh.fill("#token", TOKENS["reader"])
            fresh.click("#login button[type=submit]")
            fresh.wait_for_selector("#runs-body tr[data-run]")
            assert fresh.locator("#login").is_hidden()
        finally:
            browser.close()
    assert problems == []
