"""Never stops (but diverged maps): for studies that collect unbiased training data."""

from __future__ import annotations

from core.policy.base import Policy, Situation, Verdict


class NeverStopPolicy(Policy):
    name = "never"

    def decide(self, situation: Situation) -> Verdict:
        return Verdict("continue", self.name, "the study's decider is 'never': runs go to the end")
