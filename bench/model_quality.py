"""Decision quality on runs a model never trained on: the backtest table and prediction errors.

    python bench/model_quality.py --bundle core/models/default.bundle   # its held-out split
    python bench/model_quality.py --folds 5 --model lite --epochs 200     # every run, out of fold

With --folds, K models are trained, each predicting the runs of the fold it did not see, and
all runs are replayed in one seeded arrival order (the README's reference table's setting).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from core import bundle
from core.bundle import Bundle
from core.features import SUPPORTED_FEATURE_SCHEMAS
from core.forecast import BundlePredictor
from core.scoring import StudyPolicy
from training import evaluate, train
from training.config import TrainConfig
from training.dataset import load_file, score_weights, split_runs

DATA = str(Path(__file__).resolve().parents[1] / "data" / "minisom_runs.jsonl.gz")


def held_out(path: str, data: str, confidence: float) -> None:
    loaded = bundle.load(Path(path).read_bytes())
    predictor = BundlePredictor(Path(path).stem, loaded)
    ids = set(loaded.manifest["data_snapshot"]["test_run_ids"])
    runs = load_file(data)
    weights = score_weights([r for r in runs if r.run_id not in ids])
    test = [r for r in runs if r.run_id in ids]
    seed = int(loaded.manifest["training_config"]["seed"])
    results = evaluate.backtest(
        test,
        weights,
        lambda run: predictor,
        loaded.manifest["origin_threshold"],
        seed,
        StudyPolicy(confidence=confidence),
    )
    report = evaluate.prediction_report(predictor, test, weights)
    print(f"held-out split of {path}: {len(test)} runs\n")
    print(evaluate.format_report(report, evaluate.backtest_dict(results)))


def cross_validated(config: TrainConfig, data: str, folds: int, confidence: float) -> None:
    runs = load_file(data)
    rng = np.random.default_rng(config.seed)
    fold_of = {
        r.run_id: int(f) for r, f in zip(runs, rng.permutation(len(runs)) % folds, strict=True)
    }
    weights = score_weights(runs)
    predictors: dict[int, BundlePredictor] = {}
    started = time.perf_counter()
    for fold in range(folds):
        rest = [r for r in runs if fold_of[r.run_id] != fold]
        inner = split_runs(rest, config.validation_share / (1 - config.test_share), 0.0, fold)
        trained = train.fit(config, inner.train, inner.validation, Path(f"var/bench/fold{fold}"))
        manifest = {
            "architecture": trained.spec,
            "feature_schema_version": config.feature_schema,
            "quantile_levels": list(config.quantile_levels),
            "interval_scale": 1.0,
        }
        predictor = BundlePredictor(f"fold{fold}", Bundle(manifest, trained.weights))
        predictor.interval_scale = evaluate.fit_interval_scale(
            predictor, inner.validation, weights, config.interval_coverage
        )
        predictors[fold] = predictor
        # Kept so that the policy side can be studied again without retraining.
        manifest["interval_scale"] = predictor.interval_scale
        artifact, _ = bundle.dump(manifest, trained.weights)
        name = f"{config.model}-f{config.feature_schema}-fold{fold}.bundle"
        Path(f"var/bench/{name}").write_bytes(artifact)
        print(
            f"fold {fold}: {trained.epochs_run} epochs, {trained.seconds:.0f} s, "
            f"interval scale {predictor.interval_scale:.3f}",
            flush=True,
        )
    print(f"trained {folds} folds in {time.perf_counter() - started:.0f} s\n")
    threshold = evaluate.tune_origin_threshold(runs, weights)
    report = evaluate.prediction_report(lambda run: predictors[fold_of[run.run_id]], runs, weights)
    base_scales = {f: p.interval_scale for f, p in predictors.items()}
    for widen in (1.0, 1.5, 2.0, 3.0):
        for f, p in predictors.items():
            p.interval_scale = base_scales[f] * widen
        results = evaluate.backtest(
            runs,
            weights,
            lambda run: predictors[fold_of[run.run_id]],
            threshold,
            config.seed,
            StudyPolicy(confidence=confidence),
        )
        shipped = " (the shipped interval_safety)" if widen == config.interval_safety else ""
        print(
            f"calibrated interval x{widen}{shipped}, confidence {confidence}, "
            f"{len(runs)} runs out of fold:"
        )
        print(
            evaluate.format_report(report if widen == 1.0 else {}, evaluate.backtest_dict(results))
        )
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--folds", type=int, default=0)
    parser.add_argument("--model", default="lite")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument(
        "--feature-schema",
        type=int,
        choices=SUPPORTED_FEATURE_SCHEMAS,
        default=TrainConfig.feature_schema,
        help="2: the model reads each run's configuration; 1: its history alone",
    )
    parser.add_argument(
        "--context-dropout",
        type=float,
        default=TrainConfig.context_dropout,
        help="share of training runs shown without their configuration (schema 2)",
    )
    args = parser.parse_args()
    if args.bundle:
        held_out(args.bundle, args.data, args.confidence)
    if args.folds:
        try:
            config = TrainConfig(
                model=args.model,
                epochs=args.epochs,
                seed=args.seed,
                feature_schema=args.feature_schema,
                context_dropout=args.context_dropout,
            )
        except ValueError as e:
            parser.error(str(e))
        cross_validated(config, args.data, args.folds, args.confidence)
    if not (args.bundle or args.folds):
        parser.error("pass --bundle FILE and/or --folds K")


if __name__ == "__main__":
    main()
