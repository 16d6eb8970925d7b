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
from threadpoolctl import threadpool_info

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


def process_of(answer: httpx.Response) -> str:
    """The answering process: request ids start with its pid and a random tag."""
    return answer.headers["x-request-id"].split("-")[0]


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
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "oracle serve did not start"
            time.sleep(0.2)
        # The kernel hands each new connection to whichever process accepts first, and one
        # process can win many in a row. Keep opening connections until both processes have
        # stored checkpoints and both have answered /metrics; each answer must count all.
        posted = 0
        storers: set[str] = set()
        i = 0
        while len(storers) < 2 or i < 10:
            assert time.monotonic() < deadline, f"one process took every connection: {storers}"
            with httpx.Client(base_url=url) as c:  # a new connection
                c.put(f"/v1/runs/m{i}", json={"study_id": "s", "max_epochs": 50})
                for epoch in (1, 2, 3):
                    body = {"epoch": epoch, **POINT_FULL}
                    answer = c.post(f"/v1/runs/m{i}/checkpoints", json=body)
                    assert answer.status_code == 200
                    storers.add(process_of(answer))
                    posted += 1
            i += 1
        reporters: set[str] = set()
        while len(reporters) < 2:
            assert time.monotonic() < deadline, f"one process took every connection: {reporters}"
            with httpx.Client(base_url=url) as c:
                answer = c.get("/metrics")
            reporters.add(process_of(answer))
            assert sample(answer.text, "oracle_checkpoints_stored_total") == posted
            assert sample(answer.text, "oracle_model_versions", status="published") == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


def test_the_service_runs_one_blas_thread(client: TestClient) -> None:
    """The model's tiny matmuls must not wake BLAS threads that spin on the other core."""
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas, "NumPy's BLAS should be visible to threadpoolctl"
    assert all(pool["num_threads"] == 1 for pool in blas)
