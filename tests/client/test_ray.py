"""OracleScheduler with the real ray[tune] package on a small local search (one CPU, loopback
only) against the real service: trials stop when the Oracle says stop, and only then."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import tune

from oracle_client import Oracle
from oracle_client.ray import OracleScheduler
from tests.client.doc_examples import DOCS, doc_example
from tests.client.service_process import WORKER_TOKEN, ServiceProcess

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-secret"  # service_process.py's admin role
MAX_EPOCHS = 8
# At every epoch a "good" trial's score (mqe + te + 0.5 dead) is below 1.0, a "bad" one's above.
CURVES = {"good": 0.2, "bad": 1.5}


def train(config: dict[str, object]) -> None:
    """A trial of made-up SOM metrics, reported once per epoch as a Tune trainable does."""
    base = CURVES[str(config["quality"])]
    for epoch in range(1, MAX_EPOCHS + 1):
        tune.report(
            {
                "epoch": epoch,
                "mqe": base + 0.5 / epoch,
                "topographic_error": 0.05,
                "dead_neuron_ratio": 0.1,
            }
        )


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A one-CPU Ray on this machine's loopback, with no dashboard and no usage reporting."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield
    finally:
        ray.shutdown()


def absolute_study(service: ServiceProcess) -> str:
    """A study that stops any run scoring above 1.0 after 10% progress."""
    study_id = f"ray-test-{uuid.uuid4().hex[:8]}"
    policy = {"threshold": {"mode": "absolute", "value": 1.0}, "decider": "median"}
    httpx.put(
        f"{service.url}/v1/studies/{study_id}",
        json={"policy": policy},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ).raise_for_status()
    return study_id


def fit(scheduler: OracleScheduler, storage: Path, qualities: list[str]) -> tune.ResultGrid:
    tuner = tune.Tuner(
        train,
        param_space={"quality": tune.grid_search(qualities), "max_epochs": MAX_EPOCHS},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, metric="mqe", mode="min", reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name="oracle", verbose=0),
    )
    return tuner.fit()


def test_scheduler_stops_the_trials_the_oracle_says_stop(
    local_ray: None, shared_service: ServiceProcess, tmp_path: Path
) -> None:
    study_id = absolute_study(shared_service)
    scheduler = OracleScheduler(study_id, shared_service.url, WORKER_TOKEN, time_attr="epoch")
    results = fit(scheduler, tmp_path, ["good", "bad", "good", "bad"])

    assert not results.errors
    last_epoch = {r.config["quality"]: set() for r in results}  # type: ignore[var-annotated]
    for result in results:
        last_epoch[result.config["quality"]].add(result.metrics["epoch"])
    assert last_epoch == {"good": {MAX_EPOCHS}, "bad": {1}}  # 1 of 8 epochs: min_progress

    with Oracle(shared_service.url, WORKER_TOKEN) as oracle:
        for trial_id, decision in scheduler.decisions.items():
            run = oracle.get_run(f"{study_id}-{trial_id}")
            quality = run["config"]["quality"]
            assert run["max_epochs"] == MAX_EPOCHS  # from the trial's config
            assert run["status"] == ("completed" if quality == "good" else "stopped")
            if quality == "bad":
                assert decision.should_stop and "absolute threshold" in decision.reason
    assert len(scheduler.decisions) == 4


def test_scheduler_fails_open_when_the_oracle_is_down(
    local_ray: None, closed_url: str, tmp_path: Path
) -> None:
    scheduler = OracleScheduler(
        "ray-down", closed_url, time_attr="epoch", max_epochs=MAX_EPOCHS, retries=1, budget=0.2
    )
    results = fit(scheduler, tmp_path, ["bad"])
    assert not results.errors
    assert [r.metrics["epoch"] for r in results] == [MAX_EPOCHS]
    assert {d.policy for d in scheduler.decisions.values()} == {"fail-open"}


def test_the_documented_example_runs_as_written(shared_service: ServiceProcess) -> None:
    """docs/integrations/ray.md's example, in a process of its own (it starts its own Ray),
    with fewer trials."""
    source = doc_example(DOCS / "ray.md").replace("num_samples=30", "num_samples=3")
    env = {**os.environ, "ORACLE_URL": shared_service.url, "ORACLE_TOKEN": WORKER_TOKEN}
    done = subprocess.run(
        [sys.executable, "-c", source], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Using the Oracle at" in done.stdout
    runs = httpx.get(
        f"{shared_service.url}/v1/runs",
        params={"study_id": "iris-tune"},
        headers={"authorization": f"Bearer {WORKER_TOKEN}"},
    ).json()["runs"]
    assert len(runs) == 3 and {r["status"] for r in runs} <= {"completed", "stopped"}
