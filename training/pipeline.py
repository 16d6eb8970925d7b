"""One retraining, top to bottom: runs -> split -> fit -> calibrate -> evaluate -> bundle.

What comes out is a candidate: the artifact and its manifest (config, architecture, metrics,
backtest, data snapshot), ready for the promotion gate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import bundle
from core.bundle import Bundle
from core.forecast import BundlePredictor
from core.scoring import Weights
from training import evaluate, heldout, train
from training.config import TrainConfig
from training.dataset import Inputs, RunRecord, Split, score_weights, split_runs


@dataclass(frozen=True)
class Candidate:
    version: str
    artifact: bytes
    manifest: dict[str, Any]
    split: Split
    weights: dict[str, Weights]
    report: str

    @property
    def utility(self) -> float:
        return float(self.manifest["metrics"]["gate"]["oracle_utility"])


def version_name(architecture: str, artifact: bytes, now: datetime | None = None) -> str:
    """`2026-11-27T21:40:00Z-standard-7f3a`: sortable by time, unique by content."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}-{architecture}-{hashlib.sha256(artifact).hexdigest()[:4]}"


def evaluation(
    predictor: BundlePredictor,
    split: Split,
    weights: dict[str, Weights],
    origin_threshold: float,
    config: TrainConfig,
) -> dict[str, Any]:
    """The figures every version carries: errors on the test runs, and the backtest."""
    results = evaluate.backtest(
        split.test, weights, lambda run: predictor, origin_threshold, config.seed
    )
    penalty = config.gate_recall_penalty
    return {
        "prediction": evaluate.prediction_report(predictor, split.test, weights),
        "backtest": evaluate.backtest_dict(results),
        "gate": {
            "oracle_utility": results["oracle"].utility(penalty),
            "median_utility": results["median"].utility(penalty),
            "recall_penalty": penalty,
        },
    }


def run(
    config: TrainConfig,
    runs: Sequence[RunRecord],
    snapshot: dict[str, Any],
    log_dir: Path,
    verbose: int = 0,
) -> Candidate:
    split = split_runs(runs, config.validation_share, config.test_share, config.seed)
    # The score's MQE scale per group, from the training runs only: no test figure leaks in.
    weights = score_weights(split.train)
    weights.update({g: w for g, w in score_weights(runs).items() if g not in weights})
    trained = train.fit(config, split.train, split.validation, log_dir, verbose=verbose)

    manifest: dict[str, Any] = {
        "architecture": trained.spec,
        "feature_schema_version": config.feature_schema,
        "quantile_levels": list(config.quantile_levels),
        "interval_scale": 1.0,
        "input_stats": heldout.input_stats(
            split.train, Inputs(config.feature_schema, 0.0, config.seed), config.max_steps
        ),
    }
    predictor = BundlePredictor("candidate", Bundle(manifest, trained.weights))
    calibrated = evaluate.fit_interval_scale(
        predictor, split.validation, weights, config.interval_coverage
    )
    predictor.interval_scale = calibrated
    coverage = evaluate.prediction_report(predictor, split.test, weights).get("coverage_80")
    predictor.interval_scale = manifest["interval_scale"] = calibrated * config.interval_safety
    manifest["calibration"] = {
        "good_scores": heldout.good_scores(predictor, split.test, weights),
        "runs": "test split",
    }
    predictor.heldout_scores = list(manifest["calibration"]["good_scores"])
    origin_threshold = evaluate.tune_origin_threshold(split.train + split.validation, weights)
    metrics = evaluation(predictor, split, weights, origin_threshold, config)
    metrics["calibration"] = {
        "calibrated_scale": calibrated,
        "safety": config.interval_safety,
        "test_coverage_80_calibrated": coverage,
        "test_coverage_80_served": metrics["prediction"].get("coverage_80"),
    }
    metrics["training"] = {
        "epochs_run": trained.epochs_run,
        "best_val_loss": trained.best_val_loss,
        "seconds": round(trained.seconds, 1),
        "train_runs": trained.n_train_runs,
    }
    manifest.update(
        {
            "training_config": config.as_dict(),
            "metrics": metrics,
            "data_snapshot": {
                **snapshot,
                "n_train": len(split.train),
                "n_validation": len(split.validation),
                "n_test": len(split.test),
                "split_seed": config.seed,
                "test_run_ids": [r.run_id for r in split.test],
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
        split=split,
        weights=weights,
        report=report,
    )
