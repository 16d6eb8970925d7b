"""Per-study calibration (core.calibration): on a domain the model misjudges, margins fitted on
the study's own finished runs keep the share of good runs the study asked for; exploration
runs are drawn by id alone."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from core import calibration
from core.calibration import Evidence, Margin, Margins

PROGRESS = np.array([0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0])


def shifted_domain(rng: np.random.Generator, n: int, bias: float, width: float) -> list[Evidence]:
    """Runs of a domain the model has never seen: final scores ~ lognormal, forecasts that
    converge to the final as the run goes on but are biased upward by `bias` (the model thinks
    every run worse than it is, by a margin that would stop good runs uncalibrated) and claim
    a `width` far narrower than their error."""
    out = []
    for _ in range(n):
        final = float(rng.lognormal(0.0, 0.5))
        noise = rng.normal(0.0, 0.6, PROGRESS.size) * (1.0 - PROGRESS)
        median = final + bias * (1.0 - PROGRESS) + noise
        out.append(Evidence(PROGRESS, median, np.full(PROGRESS.size, width), final))
    return out


def lost_share(evidence: list[Evidence], threshold: float, margin: float) -> float:
    """The share of good runs (final <= threshold) a margin would stop somewhere."""
    good = [e for e in evidence if e.final <= threshold]
    return float(np.mean([e.worst(threshold, 0.1) > margin for e in good]))


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95])
def test_margins_from_a_shifted_domain_keep_the_nominal_share_of_good_runs(
    confidence: float,
) -> None:
    rng = np.random.default_rng(11)
    threshold = 1.0  # the lognormal's median: half of the runs are good
    # Uncalibrated (margin 0: stop when the forecast's median lies above the threshold), the
    # biased model loses most good runs.
    probe = shifted_domain(rng, 2000, bias=1.5, width=0.1)
    assert lost_share(probe, threshold, 0.0) > 0.5
    kept = []
    for _ in range(200):  # 200 studies, each calibrated on 80 finished runs of its own
        own = shifted_domain(rng, 80, bias=1.5, width=0.1)
        margin = calibration.margin_of(
            calibration.good_scores(own, threshold, 0.1), confidence, "study"
        )
        assert margin is not None
        fresh = shifted_domain(rng, 200, bias=1.5, width=0.1)
        kept.append(1.0 - lost_share(fresh, threshold, margin.value))
    # Split-conformal: the coverage over studies is at least the nominal one (and, with one
    # score per run, not far above it: ceil((n + 1) c) / (n + 1)).
    assert np.mean(kept) >= confidence - 0.01
    assert np.mean(kept) <= confidence + 0.06


def test_too_few_good_runs_give_no_margin() -> None:
    assert calibration.ranks_needed(0.9) == 9
    assert calibration.margin_of(np.arange(8.0), 0.9, "study") is None
    margin = calibration.margin_of(np.arange(9.0), 0.9, "study")
    assert margin == Margin(8.0, 9, "study")  # ceil(10 * 0.9) = 9th of 9
    assert calibration.margin_of(np.arange(19.0), 0.9, "study") == Margin(17.0, 19, "study")


def test_a_study_with_too_little_evidence_borrows_the_deployments_margin_never_below_its_own() -> (
    None
):
    own = np.array([0.5, 3.0])  # two good runs: no margin of its own at 0.9
    pooled = np.sort(np.concatenate([own, np.linspace(-1, 1, 30)]))
    margins = calibration.study_margins(own, pooled, 0.9, model_scores=list(np.zeros(20)))
    assert margins.study is None and margins.deployment is not None
    assert margins.deployment.value == 3.0  # its own worst good run widens the pooled margin
    assert margins.for_run(in_distribution=False) is margins.deployment
    only_model = Margins(model=Margin(0.0, 20, "model"), needed=9)
    assert only_model.for_run(in_distribution=True) == Margin(0.0, 20, "model")
    assert only_model.for_run(in_distribution=False) is None  # unlike its training data


def test_exploration_runs_are_chosen_by_id_alone() -> None:
    ids = [f"run-{i}" for i in range(5000)]
    chosen = [r for r in ids if calibration.is_exploration(r, 0.1)]
    assert 0.085 < len(chosen) / len(ids) < 0.115
    # The same answer from the definition (another process, another replica, a retry).
    by_hand = [
        r
        for r in ids
        if int.from_bytes(hashlib.blake2b(r.encode(), digest_size=8).digest(), "big") / 2**64 < 0.1
    ]
    assert chosen == by_hand
    assert not any(calibration.is_exploration(r, 0.0) for r in ids)
    # A larger share keeps every run a smaller one chose.
    wider = {r for r in ids if calibration.is_exploration(r, 0.3)}
    assert set(chosen) <= wider


def test_a_runs_worst_statistic_ignores_the_warm_up_and_its_end() -> None:
    e = Evidence(PROGRESS, np.array([9.0, 1, 2, 3, 2, 1, 0, 8.0]), np.ones(8), final=0.5)
    assert e.worst(threshold=0.0, min_progress=0.1) == 3.0
    assert e.worst(threshold=0.0, min_progress=1.0) == -math.inf
