"""The model-backed policy: stop only where the study's own evidence says the model's stops
keep `confidence` of its good runs (core.calibration), else let the run go on.

The forecast's stop statistic z (interval widths above the threshold) must exceed the margin
calibrated for the study. Without a margin (too few unbiased finished runs, and inputs unlike
the model's training data), the model does not stop: a new domain is never judged by what the
model claims of itself on another one.
"""

from __future__ import annotations

import math

from core.calibration import statistic_of
from core.policy.base import Policy, Situation, Verdict, fmt


class OraclePolicy(Policy):
    name = "oracle"

    def decide(self, situation: Situation) -> Verdict | None:
        prediction = situation.predict()
        if prediction is None:
            return None  # no active model: the next policy (the median rule) answers
        settings = situation.policy
        threshold = situation.thresholds.final
        if not math.isfinite(threshold):
            # More than the percentile's share of the study was stopped: where the threshold
            # lies is unknown, and so is whether this run ends below it.
            return Verdict(
                "continue",
                "warmup",
                f"the study's p{settings.threshold.value:g} lies among its stopped runs, whose "
                "finals are unknown: no model stop until more runs finish",
                prediction=prediction,
            )
        lo, hi = prediction.interval(0.8)
        where = f"predicted score {fmt(prediction.score)} [{fmt(lo)}, {fmt(hi)}]"
        z = statistic_of(prediction.score, hi - lo, threshold)
        margins = situation.margins
        margin = margins.for_run(prediction.in_distribution) if margins is not None else None
        if margin is None:
            # Continue, and policy "warmup": the run's completion does not depend on its
            # metrics, so it becomes evidence that will calibrate the model for this study.
            return Verdict(
                "continue",
                "warmup",
                f"{where}: the model is not calibrated for this study yet "
                f"({_evidence(situation, prediction.in_distribution)}); no model stop before",
                threshold=threshold,
                prediction=prediction,
            )
        against = f"the study's threshold {fmt(threshold)}"
        if z > margin.value:
            return Verdict(
                "stop",
                self.name,
                f"{where} lies {z:.2f} interval widths above {against}, beyond the "
                f"{margin.describe()} (keeps {settings.confidence:.0%} of its good runs)",
                threshold=threshold,
                prediction=prediction,
            )
        return Verdict(
            "continue",
            self.name,
            f"{where} lies {z:.2f} interval widths from {against}, within the {margin.describe()}",
            threshold=threshold,
            prediction=prediction,
        )


def _evidence(situation: Situation, in_distribution: bool) -> str:
    margins = situation.margins
    have = margins.own_good if margins is not None else 0
    needed = margins.needed if margins is not None else 0
    what = f"{have} of the {needed} unbiased finished runs better than the threshold it needs"
    if not in_distribution:
        what += "; the run's inputs are unlike the model's training data"
    return what
