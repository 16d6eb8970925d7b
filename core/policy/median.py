"""The median stopping rule, with Optuna's MedianPruner semantics at relative progress.

Stop when the run's best score so far is worse than the study's threshold (by default the
median) of its finished runs' scores at the same progress `epoch / max_epochs`.
"""

from __future__ import annotations

from core.policy.base import Policy, Situation, Verdict, fmt


class MedianPolicy(Policy):
    name = "median"

    def decide(self, situation: Situation) -> Verdict:
        progress = situation.progress
        threshold = situation.thresholds.at(progress)
        best = situation.best_score()
        what = _threshold_name(situation)
        if best > threshold:
            return Verdict(
                "stop",
                self.name,
                f"best score so far {fmt(best)} is worse than {what} {fmt(threshold)} "
                f"at {progress:.0%} progress",
                threshold=threshold,
            )
        return Verdict(
            "continue",
            self.name,
            f"best score so far {fmt(best)} is not worse than {what} {fmt(threshold)} "
            f"at {progress:.0%} progress",
            threshold=threshold,
        )


def _threshold_name(situation: Situation) -> str:
    threshold = situation.policy.threshold
    if threshold.mode == "absolute":
        return "the study's absolute threshold"
    return f"the p{threshold.value:g} of the study's {situation.thresholds.n_runs} finished runs"
