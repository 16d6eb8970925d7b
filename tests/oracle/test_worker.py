"""The real SOM worker: its checkpoint schedule, and real maps reported to a real service."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oracle.worker import checkpoint_epochs, run_workers
from tests.conftest import free_port, oracle_bin


@given(st.integers(min_value=1, max_value=5000))
def test_worker_checkpoints_are_increasing_and_end_at_max_epochs(max_epochs: int) -> None:
    epochs = checkpoint_epochs(max_epochs)
    assert epochs[0] == 1 and epochs[-1] == max_epochs
    assert all(b > a for a, b in itertools.pairwise(epochs))
    assert len(epochs) == min(16, max_epochs)


def test_worker_checkpoints_match_the_shared_data_schedule(data_file: Path) -> None:
    for line in data_file.read_text().splitlines():
        run = json.loads(line)
        expected = [c["epoch"] for c in run["checkpoints"]]
        assert checkpoint_epochs(run["max_epochs"]) == expected, run["run_id"]


@pytest.mark.slow
def test_worker_trains_real_maps_and_reports_them(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/w.db", "ORACLE_TOKENS": ""}
    server = subprocess.Popen(
        [oracle_bin(), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        outcomes = run_workers(
            url,
            None,
            runs=3,
            parallel=2,
            seed=7,
            study_prefix="t",
            datasets=("iris",),
            min_epochs=5,
            max_epochs=12,
        )
        assert len(outcomes) == 3
        for outcome in outcomes:
            run = httpx.get(f"{url}/v1/runs/{outcome.run_id}").json()
            assert run["status"] == outcome.status
            assert run["dataset"] == "iris" and run["study_id"] == "t-iris"
            epochs = [c["epoch"] for c in run["checkpoints"]]
            assert epochs == checkpoint_epochs(run["max_epochs"])[: len(epochs)]
            assert epochs[-1] == outcome.epochs_run
            first = run["checkpoints"][0]
            assert first["mqe"] is None or first["mqe"] > 0
            assert all(c["wall_s"] is not None for c in run["checkpoints"])
    finally:
        server.terminate()
        server.wait(10)
