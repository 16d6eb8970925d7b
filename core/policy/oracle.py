"""The model-backed policy: stop when the model is confident the final will miss the threshold."""

from __future__ import annotations

import math

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
            return None
        # P(final score > threshold) >= confidence  <=>  the (1 - confidence) quantile is above.
        optimistic = prediction.quantile(1 - settings.confidence)
        lo, hi = prediction.interval(0.8)
        where = f"predicted score {fmt(prediction.score)} [{fmt(lo)}, {fmt(hi)}]"
        if optimistic > threshold:
            return Verdict(
                "stop",
                self.name,
                f"{where} is worse than the study's threshold {fmt(threshold)} with "
                f"{settings.confidence:.0%} confidence",
                threshold=threshold,
                prediction=prediction,
            )
        return Verdict(
            "continue",
            self.name,
            f"{where}: not {settings.confidence:.0%} sure it ends worse than the study's "
            f"threshold {fmt(threshold)}",
            threshold=threshold,
            prediction=prediction,
        )
