"""A corrupt or schema-mismatched model published to the registry: a real `oracle serve` keeps
the model it serves (or the median fallback), answers every checkpoint, and reports the
failure in its log and in /metrics (oracle_model_load_failures_total)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import bundle, registry
from core.db import Database
from tests.conftest import auth
from tests.load.harness import Server, metrics_at
from tests.training.conftest import random_bundle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _publish(url: str, version: str, manifest: dict[str, Any], artifact: bytes) -> None:
    """What a trainer does: add the version and move the alias (no API, no gate)."""
    db = Database.connect(url)
    try:
        with db.writes.begin() as session:
            registry.add_version(
                session, version=version, architecture="lite", manifest=manifest, artifact=artifact
            )
            registry.activate(session, version, by="trainer")
    finally:
        db.dispose()


def _serving(server: Server) -> str | None:
    version: str | None = httpx.get(f"{server.url}/readyz").json()["model_version"]
    return version


def _failures(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(r"^oracle_model_load_failures_total ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _answers_checkpoints(server: Server, run_id: str) -> list[dict[str, Any]]:
    worker = auth("worker")
    body = {"study_id": "model-faults", "max_epochs": 10}
    assert httpx.put(f"{server.url}/v1/runs/{run_id}", json=body, headers=worker).is_success
    answers = []
    for epoch in (1, 2, 3):
        response = httpx.post(
            f"{server.url}/v1/runs/{run_id}/checkpoints",
            json={"epoch": epoch, **metrics_at(epoch, 3)},
            headers=worker,
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def _bad_models(good_manifest: dict[str, Any], good: bytes) -> dict[str, tuple[dict, bytes]]:  # type: ignore[type-arg]
    truncated = good[: len(good) // 2]
    future = {**good_manifest, "bundle_schema_version": 99}
    other_features = {**good_manifest, "feature_schema_version": -1}
    edited = {**good_manifest, "weights_sha256": "0" * 64}
    return {
        "corrupt-bytes": (good_manifest, b"this is not a zip file"),
        "truncated": (good_manifest, truncated),
        "future-schema": (future, good),
        "other-features": (other_features, good),
        "manifest-disagrees": (edited, good),
    }


def test_bad_model_keeps_the_previous_one_serving(sqlite_url: str, tmp_path: Path) -> None:
    server = Server(sqlite_url, tmp_path / "server.log").start()
    try:
        good = random_bundle()
        manifest = bundle.load(good).manifest
        _publish(sqlite_url, "good", manifest, good)
        assert _wait_for(lambda: _serving(server) == "good"), server.tail()
        for n, (name, (bad_manifest, artifact)) in enumerate(_bad_models(manifest, good).items()):
            _publish(sqlite_url, name, bad_manifest, artifact)
            assert _wait_for(lambda n=n: _failures(server) >= n + 1), (name, server.tail())
            assert _serving(server) == "good", name
            assert f'"version": "{name}"' in server.tail(10**6)
            answers = _answers_checkpoints(server, f"run-{name}")
            assert all(a["model_version"] in (None, "good") for a in answers)
        assert server.alive
        log = server.tail(10**6)
        assert log.count('"event": "model_load_failed"') >= 5
    finally:
        server.stop()


def test_bad_model_without_a_previous_one_falls_back_to_the_median_rule(
    sqlite_url: str, tmp_path: Path
) -> None:
    # No shipped default either: the broken version is the only one there is.
    server = Server(sqlite_url, tmp_path / "server.log", env={"ORACLE_DEFAULT_MODEL": "0"}).start()
    try:
        good = random_bundle()
        _publish(sqlite_url, "broken", bundle.load(good).manifest, b"garbage")
        assert _wait_for(lambda: _failures(server) >= 1), server.tail()
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["model_version"] is None and ready.json()["policy"] == "median"
        answers = _answers_checkpoints(server, "run-fallback")
        assert {a["policy"] for a in answers} <= {"warmup", "median"}
        assert '"event": "model_load_failed"' in server.tail(10**6)
    finally:
        server.stop()
