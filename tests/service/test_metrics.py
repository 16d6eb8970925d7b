"""/metrics counts decisions by action and policy, stored checkpoints and request latency."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import free_port, oracle_bin

POINT_FULL = {"mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}


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


@pytest.mark.slow
def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    """`oracle serve --workers 2`: whichever process answers /metrics counts both."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/m.db",
        "ORACLE_TOKENS": "",
        "PROMETHEUS_MULTIPROC_DIR": "",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    server = subprocess.Popen(
        [oracle_bin(), "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "oracle serve did not start"
            time.sleep(0.2)
        posted = 0
        for i in range(10):
            with httpx.Client(base_url=url) as c:  # new connections: both processes serve
                c.put(f"/v1/runs/m{i}", json={"study_id": "s", "max_epochs": 50})
                for epoch in (1, 2, 3):
                    body = {"epoch": epoch, **POINT_FULL}
                    assert c.post(f"/v1/runs/m{i}/checkpoints", json=body).status_code == 200
                    posted += 1
        pids = set()
        for _ in range(8):
            with httpx.Client(base_url=url) as c:
                text = c.get("/metrics").text
                pids.add(c.get("/readyz").headers.get("x-request-id", "").split("-")[0])
            assert sample(text, "oracle_checkpoints_stored_total") == posted
            assert sample(text, "oracle_model_versions", status="published") == 1
        assert len(pids) == 2, "both worker processes should have answered"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)
