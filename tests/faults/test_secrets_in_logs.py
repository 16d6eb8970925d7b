"""Tokens never reach the logs, and admin actions are logged with who did them (the token's
fingerprint, never the token): a real `oracle serve` at debug level, every endpoint called
with every token and with wrong ones, its whole output searched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from core import bundle, registry
from core.db import Database
from tests.conftest import TOKENS
from tests.load.harness import Server
from tests.training.conftest import random_bundle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WRONG = ["wrong-token-4f1c9a", "admin-secre", "Bearer admin-secret"]
CALLS = [
    ("GET", "/v1/studies", None),
    ("PUT", "/v1/studies/s1", {"description": "x"}),
    ("PUT", "/v1/studies/s1", {"policy": {"min_progress": 0.2}}),
    ("PUT", "/v1/runs/r1", {"study_id": "s1", "max_epochs": 10}),
    ("POST", "/v1/runs", {"study_id": "s1", "max_epochs": 10}),
    (
        "POST",
        "/v1/runs/r1/checkpoints",
        {"epoch": 1, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1},
    ),
    ("GET", "/v1/runs/r1", None),
    ("GET", "/v1/runs", None),
    ("POST", "/v1/runs/r1/finish", {"status": "stopped"}),
    (
        "POST",
        "/v1/predict",
        {
            "max_epochs": 10,
            "epochs": [1],
            "mqe": [1.0],
            "topographic_error": [0.1],
            "dead_neuron_ratio": [0.1],
        },
    ),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/active", None),
    ("POST", "/v1/models/nope/activate", None),
    ("POST", "/v1/models/m1/activate", None),
    ("GET", "/v1/dashboard/summary", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
]


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def test_tokens_never_logged_and_admin_actions_name_their_author(
    sqlite_url: str, tmp_path: Path
) -> None:
    server = Server(sqlite_url, tmp_path / "server.log", env={"ORACLE_LOG_LEVEL": "debug"})
    server.start()
    artifact = random_bundle()
    db = Database.connect(sqlite_url)
    with db.writes.begin() as session:
        registry.add_version(
            session,
            version="m1",
            architecture="lite",
            manifest=bundle.load(artifact).manifest,
            artifact=artifact,
        )
    db.dispose()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for token in [*TOKENS.values(), *WRONG]:
                for method, path, body in CALLS:
                    client.request(
                        method, path, json=body, headers={"Authorization": f"Bearer {token}"}
                    )
                    # the dashboard takes ?token=; a query string must not be logged either
                    client.get(f"/?token={token}")
            client.request("GET", "/v1/studies", headers={"Authorization": TOKENS["admin"]})
    finally:
        server.stop()
    log = server.tail(10**8)
    assert log.strip(), "the server logged nothing: the test would prove nothing"
    for secret in [*TOKENS.values(), WRONG[0]]:
        assert secret not in log, f"a token is in the log: {secret}"
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    admin = f"admin:{fingerprint(TOKENS['admin'])}"
    policy_set = [e for e in events if e.get("event") == "study_policy_set"]
    assert policy_set and all(e["by"] == admin for e in policy_set), policy_set
    activated = [e for e in events if e.get("event") == "model_activated"]
    assert activated and all(e["by"] == admin for e in activated), activated
    # Structured logs: a request's lines carry its id; start-up says database, model and auth.
    assert all(e.get("request_id") for e in policy_set + activated)
    started = [e for e in events if e.get("event") == "started"]
    assert started and {"database", "backend", "model_version", "auth"} <= started[0].keys()
    assert started[0]["auth"] == "tokens"
