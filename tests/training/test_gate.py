"""The promotion gate on small data: 20 finished runs are enough to promote a clearly better
forecaster and to refuse a clearly worse one; ties and tiny samples keep the active model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core import bundle
from core.forecast import BundlePredictor
from tests.training.conftest import random_bundle
from training import gate
from training.dataset import RunRecord, score_weights

ALPHA = 0.05


@pytest.fixture(scope="module")
def twenty(runs: list[RunRecord]) -> list[RunRecord]:
    """20 finished runs of two data sets, with database keys 1..20."""
    chosen = [r for r in runs if r.trainable and r.group == "iris"][:10]
    chosen += [r for r in runs if r.trainable and r.group == "wine"][:10]
    return [dataclasses.replace(r, pk=i + 1) for i, r in enumerate(chosen)]


@pytest.fixture(scope="module")
def good() -> BundlePredictor:
    """The shipped model: trained on these trainers' runs."""
    return BundlePredictor("good", bundle.load(bundle.DEFAULT_PATH.read_bytes()))


@pytest.fixture(scope="module")
def bad() -> BundlePredictor:
    """Random weights of the same shape: forecasts unrelated to the runs."""
    return BundlePredictor("bad", bundle.load(random_bundle(seed=3)))


def _compare(
    runs: list[RunRecord], candidate: BundlePredictor, active: BundlePredictor, after_pk: int = 0
) -> gate.Comparison:
    return gate.compare(runs, lambda run: candidate, active, score_weights(runs), 10, after_pk)


def test_a_clearly_better_model_is_promoted_on_20_runs(
    twenty: list[RunRecord], good: BundlePredictor, bad: BundlePredictor
) -> None:
    comparison = _compare(twenty, good, bad)
    passed, reason = comparison.verdict(ALPHA)
    assert passed, reason
    assert comparison.overall.n_runs == 20 and comparison.overall.p_better is not None
    assert comparison.overall.p_better < 1e-3 and comparison.overall.improvement > 0.3
    assert [s.scope for s in comparison.studies] == ["iris", "wine"]
    assert "better with p=" in reason and "never saw" in reason


def test_a_clearly_worse_model_is_refused_on_20_runs(
    twenty: list[RunRecord], good: BundlePredictor, bad: BundlePredictor
) -> None:
    comparison = _compare(twenty, bad, good)
    passed, reason = comparison.verdict(ALPHA)
    assert not passed
    assert comparison.overall.p_worse is not None and comparison.overall.p_worse < 1e-3
    # Worse in each study too, and the reason names them.
    assert "worse in iris" in reason and "wine" in reason


def test_a_tie_keeps_the_active_model(twenty: list[RunRecord], good: BundlePredictor) -> None:
    comparison = _compare(twenty, good, good)
    passed, reason = comparison.verdict(ALPHA)
    assert not passed and "too few runs" in reason  # no run differs: nothing to test
    assert comparison.overall.candidate_loss == comparison.overall.active_loss


def test_too_few_runs_keep_the_active_model(
    twenty: list[RunRecord], good: BundlePredictor, bad: BundlePredictor
) -> None:
    passed, reason = _compare(twenty[:6], good, bad).verdict(ALPHA)
    assert not passed and "too few runs" in reason


def test_better_overall_but_worse_in_one_study_is_refused() -> None:
    iris = [gate.PairedLoss(f"i{i}", "iris", True, 0.1, 0.3) for i in range(40)]
    wine = [gate.PairedLoss(f"w{i}", "wine", i % 2 == 0, 0.5 + i / 100, 0.2) for i in range(10)]
    comparison = gate.Comparison(
        overall=gate.evidence_of("all studies", iris + wine, 10),
        studies=(gate.evidence_of("iris", iris, 10), gate.evidence_of("wine", wine, 10)),
        runs="test runs",
    )
    assert comparison.overall.p_better is not None and comparison.overall.p_better < ALPHA
    assert comparison.studies[1].n_unbiased == 5
    passed, reason = comparison.verdict(ALPHA)
    assert not passed and "worse in wine" in reason
    evidence = comparison.as_dict()
    assert evidence["studies"][0]["improvement"] == pytest.approx(2 / 3, abs=1e-4)


def test_only_runs_the_active_model_never_saw_are_compared(
    twenty: list[RunRecord], good: BundlePredictor, bad: BundlePredictor
) -> None:
    fresh = _compare(twenty, good, bad, after_pk=5)
    assert fresh.overall.n_runs == 15 and "never saw" in fresh.runs
    # Fewer new runs than a test needs: all runs, and the verdict says so.
    stale = _compare(twenty, good, bad, after_pk=15)
    assert stale.overall.n_runs == 20 and "trained on some" in stale.runs


def test_run_loss_is_the_pinball_loss_of_the_score_quantiles(
    twenty: list[RunRecord], good: BundlePredictor
) -> None:
    run = twenty[0]
    weights = score_weights(twenty)[run.group]
    vector = np.array([weights.mqe, weights.topographic_error, weights.dead_neuron_ratio])
    loss = gate.run_loss(good, run, weights)
    where = (run.history[:, 0] >= 0.1) & (run.history[:, 0] < 1.0)
    by_hand = []
    for k in np.flatnonzero(where):
        q = good.score_quantiles(good.final_quantiles(run.history[: k + 1], run.context), vector)
        err = float(run.final @ vector) - q
        by_hand.append(np.mean(np.maximum(good.levels * err, (good.levels - 1) * err)))
    assert loss == pytest.approx(float(np.mean(by_hand)), rel=1e-6)
    assert gate.run_loss(good, dataclasses.replace(run, final=np.full(3, np.nan)), weights) is None
