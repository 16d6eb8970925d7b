"""A tiny real model trained end to end: fit, bundle, serve, publish through the gate, watch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from core import registry
from core.tables import ModelVersion
from service.serving.loader import load_predictor
from tests.training.conftest import store_runs
from training import pipeline, publish, watch
from training.config import TrainConfig
from training.dataset import RunRecord

TINY = TrainConfig(model="lite", width=0.1, epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def candidate(small_runs: list[RunRecord], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return pipeline.run(TINY, small_runs, {"source": "test"}, tmp_path_factory.mktemp("logs"))


@pytest.mark.slow
def test_a_tiny_model_trains_and_serves(candidate: pipeline.Candidate) -> None:
    manifest = candidate.manifest
    assert manifest["training_config"]["epochs"] == 1
    assert manifest["metrics"]["training"]["epochs_run"] == 1
    assert set(manifest["metrics"]["backtest"]) == {"oracle", "never", "median", "asha", "origin"}
    assert "20%" in manifest["metrics"]["prediction"]["by_progress"]
    assert len(manifest["data_snapshot"]["test_run_ids"]) == len(candidate.split.test)
    predictor = load_predictor(candidate.version, manifest, candidate.artifact)
    history = candidate.split.test[0].history[:4]
    prediction = predictor.predict(history, (1.0, 1.0, 0.5))
    assert np.isfinite(prediction.score) and prediction.model_version == candidate.version


def _with_utility(candidate: pipeline.Candidate, utility: float, version: str):  # type: ignore[no-untyped-def]
    manifest = dict(candidate.manifest)
    manifest["metrics"] = {**manifest["metrics"], "gate": {**manifest["metrics"]["gate"]}}
    manifest["metrics"]["gate"]["oracle_utility"] = utility
    return dataclasses.replace(candidate, manifest=manifest, version=version)


@pytest.mark.slow
def test_gate_promotes_a_better_model_and_rejects_a_worse_one(
    candidate: pipeline.Candidate, sqlite_url: str
) -> None:
    engine = create_engine(sqlite_url)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        result = publish.publish(session, _with_utility(candidate, 1.0, "v-good"), TINY)
    assert result.passed and result.active_utility is None
    with sessions.begin() as session:
        active = publish._active_utility(session, candidate, TINY)
        assert active is not None
        result = publish.publish(session, _with_utility(candidate, active, "v-same"), TINY)
    assert not result.passed
    with Session(engine) as session:
        assert registry.active_version(session) == "v-good"
        rows = {r.version: r for r in session.scalars(select(ModelVersion))}
        assert rows["v-good"].status == "published"
        assert rows["v-same"].status == "rejected" and "does not beat" in rows["v-same"].reason
    engine.dispose()


@pytest.mark.slow
def test_watch_retrains_when_new_runs_arrived(
    runs: list[RunRecord], sqlite_url: str, tmp_path: Path
) -> None:
    engine = create_engine(sqlite_url)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        store_runs(session, [r for r in runs if r.trainable][:60], "completed")
    attempts = watch.watch(
        sessions, sessions, TINY, tmp_path, interval_s=3600, min_new_runs=10, max_cycles=1,
        sleep=lambda s: None,
    )  # fmt: skip
    assert attempts == 1
    with Session(engine) as session:
        (row,) = session.scalars(select(ModelVersion)).all()
        assert row.manifest["data_snapshot"]["n_runs"] == 60
        assert watch.last_snapshot_pk(session) == row.manifest["data_snapshot"]["max_run_pk"]
    engine.dispose()


def test_watch_survives_a_failing_retraining(
    runs: list[RunRecord], sqlite_url: str, tmp_path: Path
) -> None:
    engine = create_engine(sqlite_url)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        store_runs(session, [r for r in runs if r.trainable][:25], "completed")
    slept: list[float] = []
    # No validation run at all: fit raises before any TensorFlow work.
    broken = dataclasses.replace(TINY, validation_share=1e-6)
    attempts = watch.watch(
        sessions, sessions, broken, tmp_path, interval_s=0.0, min_new_runs=1, max_cycles=2,
        sleep=slept.append,
    )  # fmt: skip
    assert attempts == 2 and slept == [0.0, 0.0]  # both failed, were logged, the loop went on
    with Session(engine) as session:
        assert session.scalars(select(ModelVersion)).all() == []
    engine.dispose()
