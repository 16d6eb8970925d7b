"""A study's exploration runs go to the end whatever their metrics say (a diverged map still
stops): their finals are the unbiased sample the model's calibration, its gate and its
training rest on (core.calibration)."""

from __future__ import annotations

from core.policy.base import Policy, Situation, Verdict


class ExplorePolicy(Policy):
    name = "explore"

    def decide(self, situation: Situation) -> Verdict | None:
        if not situation.exploration:
            return None
        share = situation.policy.exploration
        return Verdict(
            "continue",
            self.name,
            f"an exploration run ({share:.0%} of the study's runs, chosen by run id): never "
            "stopped on its metrics, so its final is an unbiased sample for calibration",
            prediction=situation.predict(),
        )
