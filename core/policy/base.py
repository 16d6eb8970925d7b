"""The common shape of a policy: a pure `decide(situation) -> Verdict | None`."""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Literal, Protocol

import numpy as np

from core.calibration import Margins
from core.reference import Thresholds
from core.scoring import StudyPolicy

Action = Literal["continue", "stop"]


@dataclass(frozen=True)
class Prediction:
    """A model's forecast of a run's final metrics and of its final score's distribution."""

    final: tuple[float, float, float]  # mqe, topographic_error, dead_neuron_ratio
    score: float
    # Quantile levels → predicted final score at that level (e.g. {0.1: .., 0.5: .., 0.9: ..}).
    score_quantiles: dict[float, float]
    model_version: str
    # How unlike the model's training inputs this run's current inputs are (RMS z-score), and
    # the distance below which the model's training data held 99% of its inputs; None when the
    # model did not record them.
    ood: float | None = None
    ood_limit: float | None = None

    @property
    def in_distribution(self) -> bool:
        return self.ood is not None and self.ood_limit is not None and self.ood <= self.ood_limit

    @cached_property
    def _points(self) -> list[tuple[float, float]]:
        """(level, score) by level, made once (a frozen dataclass may cache this way)."""
        return sorted(self.score_quantiles.items())

    def interval(self, coverage: float = 0.8) -> tuple[float, float]:
        lo, hi = (1 - coverage) / 2, 1 - (1 - coverage) / 2
        return self.quantile(lo), self.quantile(hi)

    def quantile(self, level: float) -> float:
        """The score at `level`: linear between the model's levels, clamped beyond them (as
        `np.interp`, without building arrays: a decision asks for five of these)."""
        points = self._points
        if level <= points[0][0]:
            return float(points[0][1])
        for (q0, v0), (q1, v1) in itertools.pairwise(points):
            if level <= q1:
                return float(v0 + (v1 - v0) * (level - q0) / (q1 - q0))
        return float(points[-1][1])


class Predictor(Protocol):
    """What a loaded model offers the policies; the service's holder provides one."""

    version: str

    def predict(
        self, history: np.ndarray, weights: Sequence[float], context: np.ndarray | None = None
    ) -> Prediction:
        """`context`: features.encode_context of the run (None: its configuration is unknown)."""
        ...


@dataclass(frozen=True)
class Situation:
    """Everything a policy may look at for one checkpoint of one run."""

    epoch: int
    max_epochs: int
    history: np.ndarray  # (n, 4): progress, mqe, te, dead; NaN = non-finite; last row = now
    policy: StudyPolicy
    thresholds: Thresholds
    predictor: Predictor | None = None
    # The forecast, when the caller made it already (the writer forecasts a batch at once).
    forecast: Prediction | None = None
    # The run's configuration and length as the model reads them (features.encode_context).
    context: np.ndarray | None = None
    # What the study's model stops may rest on (core.calibration); None: nothing measured.
    margins: Margins | None = None
    # One of the study's exploration runs (calibration.is_exploration): never stopped on its
    # metrics, so that its final is an unbiased sample for calibration, the gate and training.
    exploration: bool = False

    @property
    def progress(self) -> float:
        return self.epoch / self.max_epochs

    def with_forecast(self, forecast: Prediction) -> Situation:
        """This situation with its forecast made (`dataclasses.replace`, without its cost)."""
        return Situation(
            epoch=self.epoch,
            max_epochs=self.max_epochs,
            history=self.history,
            policy=self.policy,
            thresholds=self.thresholds,
            predictor=self.predictor,
            forecast=forecast,
            context=self.context,
            margins=self.margins,
            exploration=self.exploration,
        )

    def scores(self) -> np.ndarray:
        return self.policy.weights.scores(self.history[:, 1:4])

    def best_score(self) -> float:
        """The run's best (lowest) score so far; +inf when no checkpoint has one."""
        return self.policy.weights.best(self.history[:, 1:4])

    def predict(self) -> Prediction | None:
        """The model's forecast of this run with the study's weights; None without a model
        or for a history with non-finite metrics (nothing to forecast from)."""
        if self.forecast is not None:
            return self.forecast
        if self.predictor is None or not np.all(np.isfinite(self.history[:, 1:4])):
            return None
        w = self.policy.weights
        return self.predictor.predict(
            self.history, (w.mqe, w.topographic_error, w.dead_neuron_ratio), self.context
        )


@dataclass(frozen=True)
class Verdict:
    action: Action
    policy: str
    reason: str
    threshold: float | None = None
    prediction: Prediction | None = None


class Policy(ABC):
    """One decision rule. `decide` returns None when the rule has nothing to say."""

    name: ClassVar[str]

    @abstractmethod
    def decide(self, situation: Situation) -> Verdict | None: ...


def decide(chain: Sequence[Policy], situation: Situation) -> Verdict:
    """Ask each policy in turn; the last one of a chain must always answer."""
    for policy in chain:
        verdict = policy.decide(situation)
        if verdict is not None:
            return verdict
    return Verdict("continue", "warmup", "no policy had grounds to stop the run")


def fmt(value: float) -> str:
    if not math.isfinite(value) or abs(value) >= 1e29:
        return "inf"
    return f"{value:.4g}"
