"""Answers what needs no comparison: a diverged map stops, a finished one continues."""

from __future__ import annotations

import math

from core.policy.base import Policy, Situation, Verdict


class GuardPolicy(Policy):
    name = "guard"

    def decide(self, situation: Situation) -> Verdict | None:
        _, mqe, te, dead = situation.history[-1].tolist()
        if not (math.isfinite(mqe) and math.isfinite(te) and math.isfinite(dead)):
            # The contract names this reason exactly: workers match on it.
            return Verdict("stop", self.name, "diverged")
        if situation.epoch >= situation.max_epochs:
            return Verdict(
                "continue", self.name, "the run reached max_epochs; finish it as completed"
            )
        return None
