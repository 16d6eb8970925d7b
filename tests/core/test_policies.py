"""Policies as tables: a situation in, the expected decision out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.calibration import Margin, Margins
from core.features import encode_context
from core.policy import (
    GuardPolicy,
    MedianPolicy,
    OraclePolicy,
    Prediction,
    Situation,
    WarmupPolicy,
    chain_for,
    decide,
)
from core.reference import ReferenceSet
from core.scoring import StudyPolicy, Threshold, Weights


def reference(scales: list[float]) -> ReferenceSet:
    ref = ReferenceSet()
    runs = []
    for s in scales:
        history = np.array([[0.1, s * 2.0, 0.2, 0.1], [0.5, s * 1.5, 0.2, 0.1], [1.0, s, 0.2, 0.1]])
        runs.append((history, history[-1, 1:]))
    ref.extend(runs)
    return ref


REF = reference([1.0, 1.2, 1.4, 1.6, 1.8])
DEFAULT = StudyPolicy()


def situation(
    points: list[tuple[float, float]],
    *,
    policy: StudyPolicy = DEFAULT,
    ref: ReferenceSet = REF,
    max_epochs: int = 100,
    predictor: object = None,
) -> Situation:
    history = np.array([[p, m, 0.2, 0.1] for p, m in points])
    return Situation(
        epoch=round(points[-1][0] * max_epochs),
        max_epochs=max_epochs,
        history=history,
        policy=policy,
        thresholds=ref.thresholds(policy),
        predictor=predictor,  # type: ignore[arg-type]
    )


# (case, history [(progress, mqe)], policy, expected (action, policy) or None)
CASES = [
    ("diverged stops", [(0.2, np.nan)], DEFAULT, ("stop", "guard")),
    ("at the end continues", [(1.0, 9.0)], DEFAULT, ("continue", "guard")),
    ("before min progress", [(0.05, 9.0)], DEFAULT, ("continue", "warmup")),
    (
        "too few finished runs",
        [(0.5, 9.0)],
        StudyPolicy(min_finished_runs=6),
        ("continue", "warmup"),
    ),
    ("worse than median", [(0.5, 2.5)], DEFAULT, ("stop", "median")),
    ("better than median", [(0.5, 1.5)], DEFAULT, ("continue", "median")),
    ("best so far counts", [(0.2, 1.0), (0.5, 2.5)], DEFAULT, ("continue", "median")),
    (
        "absolute threshold",
        [(0.5, 0.5)],
        StudyPolicy(threshold=Threshold(mode="absolute", value=0.6)),
        ("stop", "median"),
    ),
    (
        "p90 is lenient",
        [(0.5, 2.5)],
        StudyPolicy(threshold=Threshold(value=90)),
        ("continue", "median"),
    ),
]


@pytest.mark.parametrize(("case", "points", "policy", "expected"), CASES, ids=[c[0] for c in CASES])
def test_policy_chain_decides(
    case: str, points: list[tuple[float, float]], policy: StudyPolicy, expected: tuple[str, str]
) -> None:
    verdict = decide(chain_for(policy.decider), situation(points, policy=policy))
    assert (verdict.action, verdict.policy) == expected, verdict.reason


def test_policy_guard_and_warmup_pass_when_they_have_nothing_to_say() -> None:
    s = situation([(0.5, 1.0)])
    assert GuardPolicy().decide(s) is None
    assert WarmupPolicy().decide(s) is None
    assert OraclePolicy().decide(s) is None  # no model: the median rule answers


def test_policy_median_threshold_is_the_median_at_that_progress() -> None:
    verdict = MedianPolicy().decide(situation([(0.5, 1.0)]))
    assert verdict.threshold == pytest.approx(1.4 * 1.5 + 0.2 + 0.05)


def test_policy_median_is_pure() -> None:
    s = situation([(0.3, 2.0), (0.5, 2.2)])
    assert MedianPolicy().decide(s) == MedianPolicy().decide(s)


class FixedPredictor:
    version = "test-1"

    def __init__(self, quantiles: dict[float, float], ood: float | None = None) -> None:
        self.quantiles = quantiles
        self.ood = ood

    def predict(self, history: np.ndarray, weights: object, context: object = None) -> Prediction:
        q = self.quantiles
        return Prediction((1.0, 0.2, 0.1), q[0.5], q, self.version, self.ood, 1.0)


SURE_BAD = {0.1: 2.0, 0.5: 2.5, 0.9: 3.0}  # z = (2.5 - 1.65) / (3.0 - 2.0) = 0.85
STUDY = Margins(study=Margin(0.5, 12, "study"), own_good=12, needed=9)
POOLED = Margins(deployment=Margin(0.5, 30, "deployment"), own_good=2, needed=9)
MODEL = Margins(model=Margin(0.5, 40, "model"), own_good=2, needed=9)

# (case, forecast, ood distance, margins, exploration, expected (action, policy))
ORACLE_CASES = [
    ("calibrated on the study: beyond its margin", SURE_BAD, None, STUDY, False, "stop/oracle"),
    (
        "within the margin",
        SURE_BAD,
        None,
        Margins(study=Margin(1.0, 12, "study")),
        False,
        "continue/oracle",
    ),
    (
        "predicted better than the threshold",
        {0.1: 0.5, 0.5: 0.8, 0.9: 1.0},
        None,
        STUDY,
        False,
        "continue/oracle",
    ),
    ("pooled over the deployment's studies", SURE_BAD, None, POOLED, False, "stop/oracle"),
    ("no evidence: the model does not stop", SURE_BAD, None, Margins(), False, "continue/warmup"),
    (
        "the model's own calibration, inputs like its training",
        SURE_BAD,
        0.5,
        MODEL,
        False,
        "stop/oracle",
    ),
    (
        "the model's own calibration, inputs unlike its training",
        SURE_BAD,
        3.0,
        MODEL,
        False,
        "continue/warmup",
    ),
    (
        "the model's own calibration, distance unknown",
        SURE_BAD,
        None,
        MODEL,
        False,
        "continue/warmup",
    ),
    ("an exploration run is never stopped", SURE_BAD, None, STUDY, True, "continue/explore"),
]


@pytest.mark.parametrize(
    ("case", "quantiles", "ood", "margins", "exploration", "expected"),
    ORACLE_CASES,
    ids=[c[0] for c in ORACLE_CASES],
)
def test_policy_oracle_stops_only_beyond_the_calibrated_margin(
    case: str,
    quantiles: dict[float, float],
    ood: float | None,
    margins: Margins,
    exploration: bool,
    expected: str,
) -> None:
    s = situation([(0.5, 1.0)], predictor=FixedPredictor(quantiles, ood))
    s = dataclasses.replace(s, margins=margins, exploration=exploration)
    verdict = decide(chain_for("auto"), s)
    assert f"{verdict.action}/{verdict.policy}" == expected, verdict.reason
    assert verdict.prediction is not None and verdict.prediction.model_version == "test-1"
    if verdict.policy == "oracle":
        assert verdict.threshold == pytest.approx(1.4 + 0.2 + 0.05)
        assert "margin 0.5" in verdict.reason or "margin 1" in verdict.reason
    if verdict.policy == "warmup":
        assert "not calibrated for this study" in verdict.reason
        assert ("unlike the model's training data" in verdict.reason) == (ood != 0.5)


def test_policy_explore_applies_to_the_median_rule_too() -> None:
    s = dataclasses.replace(situation([(0.5, 2.5)]), exploration=True)
    verdict = decide(chain_for("median"), s)
    assert (verdict.action, verdict.policy) == ("continue", "explore")
    assert "unbiased" in verdict.reason


def test_policy_oracle_waits_while_the_threshold_lies_among_stopped_runs() -> None:
    ref = reference([1.0, 1.2, 1.4, 1.6, 1.8])
    ref.censored = 6  # more than half the study was stopped: its p50 is unknown
    s = situation([(0.5, 1.0)], ref=ref, predictor=FixedPredictor(SURE_BAD))
    verdict = decide(chain_for("auto"), dataclasses.replace(s, margins=STUDY))
    assert (verdict.action, verdict.policy) == ("continue", "warmup")
    assert "stopped runs" in verdict.reason


def test_policy_warmup_carries_the_forecast_when_a_model_is_loaded() -> None:
    quantiles = {0.1: 2.0, 0.5: 2.5, 0.9: 3.0}
    s = situation([(0.05, 1.0)], predictor=FixedPredictor(quantiles))
    verdict = decide(chain_for("auto"), s)
    assert (verdict.action, verdict.policy) == ("continue", "warmup")
    assert verdict.prediction is not None and verdict.prediction.score == 2.5
    assert decide(chain_for("auto"), situation([(0.05, 1.0)])).prediction is None


@settings(max_examples=300, deadline=None)
@given(
    quantiles=st.dictionaries(
        # Levels at least 1e-6 apart: closer ones overflow np.interp's slope (it then answers
        # inf where the interpolation, computed in the other order, is finite).
        st.integers(0, 10**6).map(lambda k: k / 10**6),
        st.floats(-1e6, 1e6, allow_nan=False),
        min_size=1,
        max_size=9,
    ),
    level=st.floats(-0.5, 1.5, allow_nan=False),
)
def test_a_prediction_interpolates_its_quantiles_as_numpy_does(
    quantiles: dict[float, float], level: float
) -> None:
    prediction = Prediction((1.0, 0.1, 0.0), 1.0, quantiles, "v1")
    levels = sorted(quantiles)
    expected = float(np.interp(level, levels, [quantiles[q] for q in levels]))
    assert prediction.quantile(level) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_a_situation_with_its_forecast_keeps_every_other_field() -> None:
    """`with_forecast` spells out the fields (dataclasses.replace costs more than a decision's
    forecast step); a field added to Situation must be added there too."""
    s = situation([(0.05, 1.0)], predictor=FixedPredictor({0.1: 2.0, 0.5: 2.5, 0.9: 3.0}))
    s = dataclasses.replace(s, context=encode_context({"x": 5, "y": 5}, 100), margins=STUDY)
    unset = [f.name for f in dataclasses.fields(s) if getattr(s, f.name) is None]
    assert unset == ["forecast"], "give every field a value, so that a forgotten one shows"
    forecast = Prediction((1.0, 0.1, 0.0), 2.5, {0.5: 2.5}, "v1")
    made, replaced = s.with_forecast(forecast), dataclasses.replace(s, forecast=forecast)
    assert made == replaced
    for f in dataclasses.fields(s):
        assert getattr(made, f.name) is getattr(replaced, f.name), f.name


_METRIC = st.one_of(
    st.floats(0, 1e300, allow_nan=False, allow_infinity=False),
    st.just(float("nan")),  # a non-finite metric, as history_array stores it
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(_METRIC, _METRIC, _METRIC), min_size=1, max_size=30),
    weights=st.tuples(*[st.floats(0, 1e6, allow_nan=False)] * 3),
)
def test_the_best_score_is_the_lowest_of_the_row_scores(
    rows: list[tuple[float, float, float]], weights: tuple[float, float, float]
) -> None:
    """`Weights.best` (the median rule's "best score so far") skips the second array that
    `scores` makes; it must still answer what `scores(...).min()` answers, +inf included."""
    w = Weights(mqe=weights[0], topographic_error=weights[1], dead_neuron_ratio=weights[2])
    metrics = np.array(rows, dtype=np.float64)
    assert w.best(metrics) == float(w.scores(metrics).min())
