"""The retraining job killed in the middle of fitting: the service never notices."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from core.tables import ModelVersion
from tests.conftest import TOKENS, oracle_bin
from tests.load.harness import Server, lost_or_changed, run_swarm

ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}


def _versions(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        n = int(conn.scalar(select(func.count()).select_from(ModelVersion)) or 0)
    engine.dispose()
    return n


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_trainer_killed_mid_training_leaves_the_service_untouched(
    sqlite_url: str, tmp_path: Path, data_file: Path
) -> None:
    server = Server(sqlite_url, tmp_path / "server.log").start()
    trainer: subprocess.Popen[bytes] | None = None
    try:
        active = httpx.get(f"{server.url}/v1/models/active", headers=ADMIN).json()["version"]
        versions = _versions(sqlite_url)
        log = (tmp_path / "trainer.log").open("wb")
        trainer = subprocess.Popen(
            [
                oracle_bin(),
                "train",
                "--model",
                "lite",
                "--epochs",
                "500",
                "--dataset",
                str(data_file),
                "--database-url",
                sqlite_url,
            ],
            cwd=tmp_path,
            env={**os.environ, "DATABASE_URL": sqlite_url},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Fitting has begun once TensorBoard writes its first event file.
        logs = tmp_path / "var" / "training"
        deadline = time.monotonic() + 150
        while not (logs.exists() and any(p.is_file() for p in logs.rglob("*"))):
            assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the trainer never started fitting"
            time.sleep(0.5)
        killer = threading.Timer(3.0, os.killpg, (trainer.pid, signal.SIGKILL))
        killer.start()
        outcome = run_swarm([server.url], duration_s=8, workers=8, prefix="t")
        killer.join()
        assert trainer.wait(30) == -signal.SIGKILL
        assert outcome.errors == 0, outcome.summary()
        assert len(outcome.acknowledged) > 0
        assert lost_or_changed(outcome, sqlite_url) == []
        assert server.alive
        after = httpx.get(f"{server.url}/v1/models/active", headers=ADMIN).json()["version"]
        assert after == active  # still serving the same model
        assert _versions(sqlite_url) == versions  # nothing half-published
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        if trainer is not None and trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
        server.stop()
