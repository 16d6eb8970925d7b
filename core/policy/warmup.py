"""No stop before the study's minimum progress, or before there is anything to compare with.

With a model loaded, the answer still carries its forecast: a worker sees where its run is
heading from the first checkpoint, before any decision rests on it."""

from __future__ import annotations

from core.policy.base import Policy, Situation, Verdict


class WarmupPolicy(Policy):
    name = "warmup"

    def decide(self, situation: Situation) -> Verdict | None:
        settings = situation.policy
        if situation.progress < settings.min_progress:
            return Verdict(
                "continue",
                self.name,
                f"progress {situation.progress:.0%} is below the study's minimum "
                f"{settings.min_progress:.0%} before any stop",
                prediction=situation.predict(),
            )
        needs_runs = settings.threshold.mode == "percentile"
        n = situation.thresholds.n_runs
        if needs_runs and n < settings.min_finished_runs:
            return Verdict(
                "continue",
                self.name,
                f"the study has {n} finished run{'s' if n != 1 else ''} to compare with; "
                f"{settings.min_finished_runs} are needed",
                prediction=situation.predict(),
            )
        return None
