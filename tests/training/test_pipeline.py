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
    # Every finished run has a forecaster that never trained on it, one per fold.
    assert {r.run_id for r in candidate.runs} == set(candidate.held_out)
    assert len({id(p) for p in candidate.held_out.values()}) == TINY.gate_folds
    assert manifest["calibration"]["good_scores"] == sorted(manifest["calibration"]["good_scores"])
    assert len(manifest["input_stats"]["mean"]) == manifest["architecture"]["n_inputs"]
    predictor = load_predictor(candidate.version, manifest, candidate.artifact)
    history = candidate.runs[0].history[:4]
    prediction = predictor.predict(history, (1.0, 1.0, 0.5))
    assert np.isfinite(prediction.score) and prediction.model_version == candidate.version


def test_folds_partition_the_runs_stratified(small_runs: list[RunRecord]) -> None:
    finished = [r for r in small_runs if r.trainable]
    folds = pipeline.fold_of(finished, 3, seed=7)
    assert set(folds) == {r.run_id for r in finished} and set(folds.values()) == {0, 1, 2}
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 0.1 * len(finished)
    for group in {r.group for r in finished}:  # every data set in every fold
        assert {folds[r.run_id] for r in finished if r.group == group} == {0, 1, 2}
    assert pipeline.fold_of(finished, 3, seed=7) == folds


@pytest.mark.slow
def test_publish_activates_the_first_and_stores_the_gate_evidence(
    candidate: pipeline.Candidate, sqlite_url: str
) -> None:
    engine = create_engine(sqlite_url)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        result = publish.publish(session, dataclasses.replace(candidate, version="v1"), TINY)
    assert result.passed and result.active_version is None
    # The same model again: no better than itself, so it is stored as rejected, with the
    # paired comparison that says so in its manifest.
    again = dataclasses.replace(
        candidate, version="v2", held_out={r.run_id: _served(candidate) for r in candidate.runs}
    )
    with sessions.begin() as session:
        result = publish.publish(session, again, TINY)
    assert not result.passed and result.active_version == "v1"
    with Session(engine) as session:
        assert registry.active_version(session) == "v1"
        rows = {r.version: r for r in session.scalars(select(ModelVersion))}
        assert rows["v1"].status == "published"
        assert rows["v2"].status == "rejected" and "pinball loss" in rows["v2"].reason
        evidence = rows["v2"].manifest["gate"]["evidence"]
        assert evidence["overall"]["candidate_loss"] == evidence["overall"]["active_loss"]
        assert evidence["overall"]["n_runs"] > 0 and evidence["studies"]
    engine.dispose()


def _served(candidate: pipeline.Candidate):  # type: ignore[no-untyped-def]
    return load_predictor(candidate.version, candidate.manifest, candidate.artifact)


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
        assert row.manifest["data_snapshot"]["n_unbiased"] == 60  # no policy decided them
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
