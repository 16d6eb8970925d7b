"""The training job's command-line verbs as plain functions: train, evaluate, predict.

The `oracle` CLI imports this module at start-up, so nothing heavy is imported here: TensorFlow
comes in only inside the functions that fit a model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core import bundle, registry
from core.calibration import study_margins
from core.db import DEFAULT_DATABASE_URL, Database
from core.errors import InvalidInput, NotFound
from core.features import encode_context
from core.forecast import BundlePredictor
from core.policy import Situation, chain_for, decide
from core.reference import ReferenceSet, history_array
from core.scoring import StudyPolicy, Threshold, Weights


def train(
    model: str = "lite",
    epochs: int = 200,
    dataset: str | None = None,
    database_url: str | None = None,
    watch: bool = False,
    interval: float = 3600.0,
    min_new_runs: int = 50,
    seed: int = 7,
    output: str | None = None,
    log_dir: str = "var/training",
    verbose: int = 0,
    warm_start: bool = True,
    censored: bool = False,
) -> dict[str, Any]:
    """One retraining (or, with `watch`, the scheduled loop).

    From `dataset` (a file) when given, else from the database's finished runs. The candidate
    is published through the gate when a database is in play (no `dataset`, or an explicit
    `database_url`); the bundle is written to `output` when given, or when there is no
    database (then to var/models/<version>.bundle).
    """
    from training import pipeline, publish
    from training import watch as scheduler
    from training.config import TrainConfig
    from training.dataset import load_database, load_file

    config = TrainConfig(
        model=model,
        epochs=epochs,
        seed=seed,
        log_dir=log_dir,
        warm_start=warm_start,
        censored=censored,
    )
    started = time.perf_counter()
    logs = Path(log_dir)
    use_db = dataset is None or database_url is not None
    url = database_url or DEFAULT_DATABASE_URL
    if watch:
        db = Database.connect(url)
        try:
            attempts = scheduler.watch(db.reads, db.writes, config, logs, interval, min_new_runs)
        finally:
            db.dispose()
        return {"retrainings": attempts}

    active = None
    if use_db:
        db = Database.connect(url)
        try:
            with db.reads() as session:
                active = publish.active_model(session)
                if dataset is None:
                    runs, snapshot = load_database(session, config.max_runs, censored)
        finally:
            db.dispose()
    if dataset is not None:
        runs = load_file(dataset)
        snapshot = {"source": "file", "file": str(dataset), "n_runs": len(runs)}
    candidate = pipeline.run(
        config,
        runs,
        snapshot,
        logs / model,
        verbose=verbose,
        active=active.bundle if active else None,
    )
    summary: dict[str, Any] = {
        "version": candidate.version,
        "report": candidate.report,
        "metrics": candidate.manifest["metrics"],
    }
    if output is not None or not use_db:
        path = Path(output or f"var/models/{candidate.version}.bundle")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(candidate.artifact)
        summary["bundle"] = str(path)
    if use_db:
        db = Database.connect(url)
        try:
            with db.writes.begin() as session:
                result = publish.publish(session, candidate, config, active)
        finally:
            db.dispose()
        summary["published"] = result.passed
        summary["gate"] = result.reason
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def _load(model: str | None, database_url: str | None) -> BundlePredictor:
    """A bundle file, a registry version (or 'active'), or the shipped model ('default', or
    nothing named and no database)."""
    if model is not None and Path(model).is_file():
        return BundlePredictor(Path(model).stem, bundle.load(Path(model).read_bytes()))
    if model == "default" or (model is None and database_url is None):
        return BundlePredictor("default", bundle.load(bundle.DEFAULT_PATH.read_bytes()))
    db = Database.connect(database_url or DEFAULT_DATABASE_URL)
    try:
        with db.reads() as session:
            version = model if model not in (None, "active") else registry.active_version(session)
            if version is None:
                raise NotFound("no active model version")
            row = registry.get_version(session, version)
            return BundlePredictor(version, bundle.load(bytes(row.artifact)))
    finally:
        db.dispose()


def evaluate(
    model: str,
    dataset: str,
    database_url: str | None = None,
    seed: int = 7,
    held_out_only: bool = False,
) -> dict[str, Any]:
    """Errors by target and progress, calibration and the backtest of `model` on `dataset`.

    `held_out_only` keeps only the runs that the model's manifest lists as its test split,
    for figures on runs it never trained on.
    """
    from training import evaluate as evaluation
    from training.dataset import load_file, score_weights

    predictor = _load(model, database_url)
    runs = load_file(dataset)
    manifest = _manifest_of(predictor, model, database_url)
    if held_out_only:
        held_out = set(manifest.get("data_snapshot", {}).get("test_run_ids", []))
        runs = [r for r in runs if r.run_id in held_out]
    if not runs:
        raise InvalidInput("no runs to evaluate")
    weights = score_weights(runs)
    threshold = manifest.get("origin_threshold")
    if threshold is None:
        threshold = evaluation.tune_origin_threshold(runs, weights)
    results = evaluation.backtest(runs, weights, lambda run: predictor, float(threshold), seed)
    prediction = evaluation.prediction_report(predictor, runs, weights)
    backtest = evaluation.backtest_dict(results)
    return {
        "version": predictor.version,
        "n_runs": len(runs),
        "prediction": prediction,
        "backtest": backtest,
        "report": evaluation.format_report(prediction, backtest),
    }


def _manifest_of(
    predictor: BundlePredictor, model: str | None, database_url: str | None
) -> dict[str, Any]:
    if model is not None and Path(model).is_file():
        return bundle.load(Path(model).read_bytes()).manifest
    if model == "default" or (model is None and database_url is None):
        return bundle.load(bundle.DEFAULT_PATH.read_bytes()).manifest
    db = Database.connect(database_url or DEFAULT_DATABASE_URL)
    try:
        with db.reads() as session:
            return dict(registry.get_version(session, predictor.version).manifest)
    finally:
        db.dispose()


def predict(
    sequence_file: str,
    max_epochs: int | None = None,
    model: str | None = None,
    database_url: str | None = None,
    threshold: float | None = None,
    weights: Sequence[float] = (1.0, 1.0, 0.5),
    confidence: float = 0.9,
) -> dict[str, Any]:
    """Predicted finals for one partial history (the seed's sequence JSON), and, given a
    `threshold` on the final score, the recommendation the service's policy would give."""
    data = json.loads(Path(sequence_file).read_text())
    max_epochs = int(max_epochs or data.get("max_epochs") or 0)
    if max_epochs <= 0:
        raise InvalidInput("the sequence has no max_epochs: pass --max-epochs")
    epochs = [int(e) for e in data["epochs"]]
    if not epochs or max(epochs) > max_epochs:
        raise InvalidInput(f"epochs must be non-empty and at most max_epochs {max_epochs}")
    rows = list(
        zip(epochs, data["mqe"], data["topographic_error"], data["dead_neuron_ratio"], strict=True)
    )
    rows.sort()
    history = history_array(rows, max_epochs)
    predictor = _load(model, database_url)
    context = encode_context(data.get("config"), max_epochs)  # the run's config, if the file has it
    prediction = predictor.predict(history, weights, context)
    out: dict[str, Any] = {
        "predicted_final": dict(
            zip(("mqe", "topographic_error", "dead_neuron_ratio"), prediction.final, strict=True)
        ),
        "predicted_score": prediction.score,
        "score_interval": list(prediction.interval(0.8)),
        "model_version": prediction.model_version,
    }
    if threshold is not None:
        w = Weights(mqe=weights[0], topographic_error=weights[1], dead_neuron_ratio=weights[2])
        policy = StudyPolicy(
            weights=w,
            threshold=Threshold(mode="absolute", value=threshold),
            confidence=confidence,
        )
        verdict = decide(
            chain_for("auto"),
            Situation(
                epoch=rows[-1][0],
                max_epochs=max_epochs,
                history=history,
                policy=policy,
                thresholds=ReferenceSet().thresholds(policy),
                predictor=predictor,
                context=context,
                # One history has no study: the model's own held-out calibration is all there
                # is, and only for inputs like its training data.
                margins=study_margins(
                    np.empty(0), np.empty(0), confidence, predictor.heldout_scores
                ),
            ),
        )
        out.update(action=verdict.action, policy=verdict.policy, reason=verdict.reason)
    return out
