"""One retraining, top to bottom: runs -> cross-fitted folds -> fit -> calibrate -> evaluate
-> bundle.

What comes out is a candidate: the artifact and its manifest (config, architecture, metrics,
backtest, data snapshot) and, for the promotion gate (training.gate), each finished run's
forecaster that never trained on it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core import bundle
from core.bundle import Bundle
from core.forecast import BundlePredictor
from core.scoring import Weights
from training import evaluate, heldout, train
from training.config import TrainConfig
from training.dataset import Inputs, RunRecord, score_weights, split_runs


@dataclass(frozen=True)
class Candidate:
    version: str
    artifact: bytes
    manifest: dict[str, Any]
    runs: list[RunRecord]  # the finished runs it was trained and cross-fitted on
    weights: dict[str, Weights]
    report: str
    # Each finished run's forecaster that never saw it: one of the cross-fitted fold models.
    held_out: dict[str, BundlePredictor] = field(default_factory=dict)

    def predictor_for(self, run: RunRecord) -> BundlePredictor:
        return self.held_out[run.run_id]


def version_name(architecture: str, artifact: bytes, now: datetime | None = None) -> str:
    """`2026-11-27T21:40:00Z-standard-7f3a`: sortable by time, unique by content."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}-{architecture}-{hashlib.sha256(artifact).hexdigest()[:4]}"


def evaluation(
    predictor_for: Callable[[RunRecord], BundlePredictor],
    runs: Sequence[RunRecord],
    weights: dict[str, Weights],
    origin_threshold: float,
    config: TrainConfig,
) -> dict[str, Any]:
    """The figures every version carries, on runs each forecast by a model that never saw
    it: errors, and the backtest of the service's calibrated chain beside the baselines."""
    results = evaluate.backtest(runs, weights, predictor_for, origin_threshold, config.seed)
    penalty = config.gate_recall_penalty
    return {
        "prediction": evaluate.prediction_report(predictor_for, runs, weights),
        "backtest": evaluate.backtest_dict(results),
        "utility": {
            "oracle": results["oracle"].utility(penalty),
            "median": results["median"].utility(penalty),
            "recall_penalty": penalty,
        },
    }


def warm_start_weights(
    config: TrainConfig, spec: dict[str, Any], active: Bundle | None
) -> dict[str, np.ndarray] | None:
    """The active model's weights when a candidate of `spec` can start from them."""
    if active is None or not config.warm_start:
        return None
    same = (
        active.manifest.get("architecture") == spec
        and int(active.manifest.get("feature_schema_version", 1)) == config.feature_schema
        and list(active.manifest.get("quantile_levels", [])) == list(config.quantile_levels)
    )
    return active.weights if same else None


@dataclass(frozen=True)
class _Fitted:
    predictor: BundlePredictor
    trained: train.Trained
    calibrated_scale: float


def _fit_one(
    config: TrainConfig,
    runs: Sequence[RunRecord],
    censored: Sequence[RunRecord],
    weights: dict[str, Weights],
    log_dir: Path,
    active: Bundle | None,
    verbose: int,
) -> _Fitted:
    """One model on `runs` (a validation share held out for early stopping and the interval's
    scale), from the active model's weights when they fit."""
    split = split_runs(runs, config.validation_share, 0.0, config.seed)
    spec = train.spec_for(config)
    trained = train.fit(
        config,
        [*split.train, *censored],
        split.validation,
        log_dir,
        verbose=verbose,
        initial=warm_start_weights(config, spec, active),
    )
    manifest = {
        "architecture": trained.spec,
        "feature_schema_version": config.feature_schema,
        "quantile_levels": list(config.quantile_levels),
        "interval_scale": 1.0,
    }
    predictor = BundlePredictor("candidate", Bundle(manifest, trained.weights))
    calibrated = evaluate.fit_interval_scale(
        predictor, split.validation, weights, config.interval_coverage
    )
    predictor.interval_scale = calibrated * config.interval_safety
    return _Fitted(predictor, trained, calibrated)


def fold_of(runs: Sequence[RunRecord], folds: int, seed: int) -> dict[str, int]:
    """Each run's fold, stratified by group and outcome (as split_runs draws)."""
    out: dict[str, int] = {}
    rest = list(runs)
    for k in range(folds - 1):
        share = 1.0 / (folds - k)
        split = split_runs(rest, 0.0, share, seed + k) if len(rest) > 1 else None
        if split is None:
            break
        out.update({r.run_id: k for r in split.test})
        rest = split.train
    out.update({r.run_id: folds - 1 for r in rest})
    return out


def run(
    config: TrainConfig,
    runs: Sequence[RunRecord],
    snapshot: dict[str, Any],
    log_dir: Path,
    verbose: int = 0,
    active: Bundle | None = None,
) -> Candidate:
    """Cross-fit `config.gate_folds` models (each run forecast by one that never saw it: the
    evidence of the gate and of the reported figures), then the candidate on every run."""
    finished = [r for r in runs if r.trainable]
    censored = [r for r in runs if r.censored] if config.censored else []
    # The score's MQE scale per group, from every finished run (the same for every model
    # compared: the gate's losses are paired).
    weights = score_weights(finished)
    weights.update({g: w for g, w in score_weights(runs).items() if g not in weights})
    folds = fold_of(finished, config.gate_folds, config.seed)
    held_out: dict[str, BundlePredictor] = {}
    started = time.perf_counter()
    for k in range(config.gate_folds):
        rest = [r for r in finished if folds[r.run_id] != k]
        fitted = _fit_one(config, rest, censored, weights, log_dir / f"fold{k}", active, verbose)
        held_out.update({r.run_id: fitted.predictor for r in finished if folds[r.run_id] == k})
    cross_fit_s = time.perf_counter() - started
    final = _fit_one(config, finished, censored, weights, log_dir / "all", active, verbose)
    trained = final.trained

    def predictor_for(run: RunRecord) -> BundlePredictor:
        return held_out[run.run_id]

    inputs = Inputs(config.feature_schema, 0.0, config.seed)
    manifest: dict[str, Any] = {
        "architecture": trained.spec,
        "feature_schema_version": config.feature_schema,
        "quantile_levels": list(config.quantile_levels),
        "interval_scale": final.predictor.interval_scale,
        "input_stats": heldout.input_stats(finished, inputs, config.max_steps),
        "calibration": {
            "good_scores": heldout.good_scores(predictor_for, finished, weights),
            "runs": f"every finished run, forecast by one of {config.gate_folds} cross-fitted "
            "models that never saw it",
        },
    }
    origin_threshold = evaluate.tune_origin_threshold(finished, weights)
    metrics = evaluation(predictor_for, finished, weights, origin_threshold, config)
    metrics["calibration"] = {
        "calibrated_scale": final.calibrated_scale,
        "safety": config.interval_safety,
        "cross_fitted_coverage_80": metrics["prediction"].get("coverage_80"),
    }
    metrics["training"] = {
        "epochs_run": trained.epochs_run,
        "best_val_loss": trained.best_val_loss,
        "seconds": round(trained.seconds, 1),
        "cross_fit_seconds": round(cross_fit_s, 1),
        "train_runs": trained.n_train_runs,
        "censored_runs": trained.n_censored_runs,
        "warm_start": trained.warm_start,
    }
    manifest.update(
        {
            "training_config": config.as_dict(),
            "metrics": metrics,
            "data_snapshot": {
                **snapshot,
                "n_finished": len(finished),
                "n_censored_used": len(censored),
                "folds": config.gate_folds,
                "split_seed": config.seed,
            },
            "score_mqe_weights": {g: w.mqe for g, w in sorted(weights.items())},
            "origin_threshold": origin_threshold,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    artifact, stored = bundle.dump(manifest, trained.weights)
    report = evaluate.format_report(metrics["prediction"], metrics["backtest"])
    return Candidate(
        version=version_name(config.model, artifact),
        artifact=artifact,
        manifest=stored,
        runs=finished,
        weights=weights,
        report=report,
        held_out=held_out,
    )
