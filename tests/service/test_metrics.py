"""/metrics counts decisions by action and policy, stored checkpoints and request latency."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_decisions_and_checkpoints(client: TestClient) -> None:
    before = client.get("/metrics").text
    client.put("/v1/runs/m1", json={"study_id": "s", "max_epochs": 100})
    point = {"mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}
    client.post("/v1/runs/m1/checkpoints", json={"epoch": 1, **point})
    client.post("/v1/runs/m1/checkpoints", json={"epoch": 50, **point, "mqe": None})
    after = client.get("/metrics").text
    name = "oracle_decisions_total"
    warm = sample(after, name, action="continue", policy="warmup")
    assert warm - sample(before, name, action="continue", policy="warmup") == 1
    guard = sample(after, name, action="stop", policy="guard")
    assert guard - sample(before, name, action="stop", policy="guard") == 1
    stored = "oracle_checkpoints_stored_total"
    assert sample(after, stored) - sample(before, stored) == 2
    assert re.search(
        r'oracle_request_seconds_count\{method="POST",route="/v1/runs/\{run_id\}/checkpoints"',
        after,
    )
