"""The backtest replays runs through the real policy chain beside the baselines."""

from __future__ import annotations

import numpy as np

from core import bundle
from core.forecast import BundlePredictor
from tests.training.conftest import random_bundle
from training import evaluate
from training.dataset import RunRecord, score_weights


def _predictor(seed: int = 0) -> BundlePredictor:
    return BundlePredictor("random", bundle.load(random_bundle(seed=seed)))


def test_backtest_on_a_small_subset(small_runs: list[RunRecord]) -> None:
    weights = score_weights(small_runs)
    predictor = _predictor()
    threshold = evaluate.tune_origin_threshold(small_runs, weights)
    results = evaluate.backtest(small_runs, weights, lambda run: predictor, threshold, seed=3)
    assert set(results) == {"oracle", "never", "median", "asha", "origin"}
    never = results["never"]
    # Never-stop keeps every run but the diverged ones, which the guard stops.
    assert never.recall_best10 == never.recall_best25 == 1.0
    assert all(v == 0.0 for v in never.regret.values())
    assert never.n_stopped == sum(not r.trainable for r in small_runs)
    for result in results.values():
        assert 0.0 <= result.epochs_saved < 1.0
        assert 0.0 <= result.recall_best10 <= 1.0 and 0.0 <= result.accuracy <= 1.0
        assert result.n_runs == len(small_runs)
    assert results["median"].epochs_saved > never.epochs_saved
    assert results["asha"].epochs_saved > never.epochs_saved


def test_backtest_is_repeatable_and_order_matters(small_runs: list[RunRecord]) -> None:
    weights = score_weights(small_runs)
    predictor = _predictor()
    a = evaluate.backtest(small_runs, weights, lambda run: predictor, 1.5, seed=3)
    b = evaluate.backtest(small_runs, weights, lambda run: predictor, 1.5, seed=3)
    assert evaluate.backtest_dict(a) == evaluate.backtest_dict(b)
    c = evaluate.backtest(small_runs, weights, lambda run: predictor, 1.5, seed=4)
    assert evaluate.backtest_dict(a)["median"] != evaluate.backtest_dict(c)["median"]


def test_prediction_report_by_progress_and_calibration(small_runs: list[RunRecord]) -> None:
    weights = score_weights(small_runs)
    predictor = _predictor()
    report = evaluate.prediction_report(predictor, small_runs, weights)
    assert report["n_runs"] == sum(r.trainable for r in small_runs)
    assert set(report["by_progress"]) == {"10%", "20%", "30%", "50%"}
    for entry in [report["overall"], *report["by_progress"].values()]:
        assert 0 <= entry["score_mae"] <= entry["score_rmse"] <= evaluate.ERROR_CAP
    assert 0.0 <= report["coverage_80"] <= 1.0


def test_interval_scale_reaches_the_wanted_coverage(small_runs: list[RunRecord]) -> None:
    weights = score_weights(small_runs)
    predictor = _predictor()
    predictor.interval_scale = evaluate.fit_interval_scale(predictor, small_runs, weights, 0.8)
    coverage = evaluate.prediction_report(predictor, small_runs, weights)["coverage_80"]
    if 0.05 < predictor.interval_scale < 20.0:  # not at the clip
        assert abs(coverage - 0.8) < 0.02


def test_never_stop_saves_nothing_on_finished_runs(small_runs: list[RunRecord]) -> None:
    finished = [r for r in small_runs if r.trainable]
    weights = score_weights(finished)
    results = evaluate.backtest(finished, weights, lambda run: None, np.inf, seed=1)
    assert results["never"].epochs_saved == 0.0
    assert results["origin"].epochs_saved == 0.0  # an infinite threshold never stops


def test_backtest_regret_of_a_group_that_lost_every_run_is_null_not_infinite(
    small_runs: list[RunRecord],
) -> None:
    # A predictor sure that every run ends terribly stops every run past warm-up; a study with
    # few runs then keeps none, which once put Infinity in the manifest (Postgres refuses it).
    import json

    from core.policy import Prediction

    class Doom:
        version = "doom"

        def predict(
            self, history: np.ndarray, weights: object, context: object = None
        ) -> Prediction:
            return Prediction((1e3, 1.0, 1.0), 1e3, {0.1: 1e3, 0.5: 1e3, 0.9: 1e3}, "doom")

    runs = [r for r in small_runs if r.trainable][:12]
    weights = score_weights(runs)
    results = evaluate.backtest(runs, weights, lambda run: Doom(), 1.0, seed=3)  # type: ignore[arg-type,return-value]
    table = evaluate.backtest_dict(results)
    json.dumps(table, allow_nan=False)  # storable in Postgres JSON
    assert all(v is None or np.isfinite(v) for v in results["oracle"].regret.values())
    # Diverged runs only: the guard stops them all, so the group keeps nothing.
    diverged = [r for r in small_runs if not r.trainable]
    assert diverged, "the fixture should hold diverged runs"
    lost = evaluate.backtest(diverged, score_weights(small_runs), lambda run: Doom(), 1.0, seed=3)  # type: ignore[arg-type,return-value]
    assert None in lost["never"].regret.values()
    lines = evaluate.format_report({}, evaluate.backtest_dict(lost)).splitlines()
    assert any("a group lost every run" in line for line in lines)
