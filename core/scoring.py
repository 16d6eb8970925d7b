"""The quality score of a run (lower is better) and the per-study policy settings it uses."""

from __future__ import annotations

import functools
import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

METRICS = ("mqe", "topographic_error", "dead_neuron_ratio")

FiniteNonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Weights(BaseModel):
    """`score = mqe*w_mqe + te*w_te + dead*w_dead`; the origin project's defaults."""

    # strict: "0.5" or true is not a weight (a study's policy arrives from a request body)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mqe: FiniteNonNegative = 1.0
    topographic_error: FiniteNonNegative = 1.0
    dead_neuron_ratio: FiniteNonNegative = 0.5

    def score(self, mqe: float | None, te: float | None, dead: float | None) -> float:
        """The score; +inf where any metric is missing or non-finite (a diverged map)."""
        if mqe is None or te is None or dead is None:
            return math.inf
        value = self.mqe * mqe + self.topographic_error * te + self.dead_neuron_ratio * dead
        return value if math.isfinite(value) else math.inf

    def vector(self) -> np.ndarray:
        """(w_mqe, w_te, w_dead) as a read-only array, made once per set of weights."""
        return _vector(self.mqe, self.topographic_error, self.dead_neuron_ratio)

    def scores(self, metrics: np.ndarray) -> np.ndarray:
        """Row-wise scores of an (n, 3) array; NaN rows (non-finite metrics) score +inf."""
        values = metrics @ self.vector()
        return np.where(np.isfinite(values), values, np.inf)

    def best(self, metrics: np.ndarray) -> float:
        """The lowest row score of an (n, 3) array: `scores(metrics).min()`, without the
        second array when every row is finite (each checkpoint asks for this)."""
        values = metrics @ self.vector()
        best = float(values.min())
        if math.isnan(best):  # a non-finite metric: that row scores +inf
            finite = values[np.isfinite(values)]
            return float(finite.min()) if finite.size else math.inf
        return best


@functools.lru_cache(maxsize=256)
def _vector(mqe: float, te: float, dead: float) -> np.ndarray:
    out = np.array([mqe, te, dead], dtype=np.float64)
    out.flags.writeable = False
    return out


class Threshold(BaseModel):
    """What a run is compared with: a percentile of the study's finished runs, or a value."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: Literal["percentile", "absolute"] = "percentile"
    value: Annotated[float, Field(allow_inf_nan=False)] = 50.0

    @model_validator(mode="after")
    def _percentile_in_range(self) -> Threshold:
        if self.mode == "percentile" and not 0 <= self.value <= 100:
            raise ValueError("a percentile threshold must lie in [0, 100]")
        return self


class StudyPolicy(BaseModel):
    """A study's decision settings. Every field has the documented default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    weights: Weights = Weights()
    threshold: Threshold = Threshold()
    # No stop before this share of max_epochs: the first epochs of a SOM say little.
    min_progress: Fraction = 0.1
    # Stop only when the model is this sure that the final score will be worse than the
    # threshold; the median rule has no interval and ignores it.
    confidence: Annotated[float, Field(gt=0.5, le=1, allow_inf_nan=False)] = 0.9
    # Finished runs needed before runs are compared with them (Optuna's n_startup_trials).
    min_finished_runs: Annotated[int, Field(ge=1, le=100_000)] = 5
    # The share of the study's runs (chosen by run id, core.calibration.is_exploration) that
    # nothing stops on its metrics: their finals are the unbiased evidence the model's
    # calibration, its gate and its training rest on. 0 turns exploration off.
    exploration: Annotated[float, Field(ge=0, le=0.5, allow_inf_nan=False)] = 0.1
    # Who decides once past warm-up: the model when one is active, else the median rule
    # ("auto"); or always the median rule; or never stop (to collect unbiased data).
    decider: Literal["auto", "median", "never"] = "auto"
