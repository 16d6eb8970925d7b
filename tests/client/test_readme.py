"""The README's example, run as written against the real service."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from oracle_client import Oracle
from tests.client.service_process import WORKER_TOKEN, ServiceProcess

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "client" / "README.md"


def readme_example() -> dict[str, Any]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (source,) = [b for b in blocks if "def train_som_with_oracle" in b]
    namespace: dict[str, Any] = {}
    exec(compile(source, str(README), "exec"), namespace)
    return namespace


def test_readme_train_som_with_oracle_trains_reports_and_finishes(
    shared_service: ServiceProcess,
) -> None:
    pytest.importorskip("minisom")
    np = pytest.importorskip("numpy")
    train_som_with_oracle = readme_example()["train_som_with_oracle"]
    oracle = Oracle(shared_service.url, WORKER_TOKEN)
    data = np.random.default_rng(0).normal(size=(60, 4))
    config = {"x": 5, "y": 5, "sigma": 1.2, "learning_rate": 0.5, "seed": 3}

    som, decision = train_som_with_oracle(data, config, max_epochs=20, oracle=oracle)

    assert som.get_weights().shape == (5, 5, 4)
    stored = oracle.get_run(decision.run_id)
    epochs = [c["epoch"] for c in stored["checkpoints"]]
    assert epochs[0] == 1 and epochs == sorted(set(epochs))
    assert stored["config"] == config and stored["dataset"] == "iris"
    # a new study has no finished runs to compare with, so nothing stops it early
    assert epochs[-1] == 20 and stored["status"] == "completed"
    assert decision.epoch == 20 and not decision.failed_open
