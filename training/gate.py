"""The promotion gate's statistics: is the candidate a better forecaster of the deployment's
finished runs than the active model, where the evidence can tell?

Each finished run is forecast at every checkpoint where a stop may happen by the candidate's
recipe from a model that never saw it (cross-fitted, training.pipeline) and by the active
model. A run's loss is the mean pinball loss of the forecast score quantiles against its final
score (a proper scoring rule: sharp and calibrated forecasts win, and the calibrated stops of
core.calibration save more with sharper ones). The losses are paired by run and compared with
a one-sided Wilcoxon signed-rank test, over all runs and per study: the candidate is promoted
when it is better overall with p < alpha and significantly worse in no study. Ties, and
samples too small for a test to mean anything, keep the active model.

Only runs the active model did not train on are compared (its snapshot's newest run key), so
its in-sample fit does not pass for skill; when too few are new, all are used and the verdict
says so (the comparison then leans towards the active model, never against it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from core.forecast import BundlePredictor
from core.scoring import Weights
from training.dataset import RunRecord

# The score's values are capped here, as the prediction report caps them: one blown-up map
# (MQE 1e31), or one forecast of it, must not decide a mean. Scores are never negative.
SCORE_CAP = 10.0


def run_loss(
    predictor: BundlePredictor, run: RunRecord, weights: Weights, min_progress: float = 0.1
) -> float | None:
    """Mean pinball loss of the forecast score quantiles over the run's checkpoints in
    [min_progress, 1); None for a run without a finite final or such checkpoints."""
    if not run.trainable:
        return None
    where = (run.history[:, 0] >= min_progress) & (run.history[:, 0] < 1.0)
    if not where.any():
        return None
    vector = np.array([weights.mqe, weights.topographic_error, weights.dead_neuron_ratio])
    last = int(np.flatnonzero(where)[-1]) + 1
    quantiles = predictor.quantiles_by_step(run.history[:last], run.context)
    scores = np.clip(predictor.score_quantiles(quantiles, vector), 0.0, SCORE_CAP)[where[:last]]
    truth = min(float(run.final @ vector), SCORE_CAP)
    err = truth - scores  # (k, Q)
    taus = predictor.levels[None, :]
    return float(np.mean(np.maximum(taus * err, (taus - 1.0) * err)))


@dataclass(frozen=True)
class PairedLoss:
    run_id: str
    group: str
    unbiased: bool
    candidate: float
    active: float


@dataclass(frozen=True)
class Evidence:
    """One comparison (all runs, or one study's): sizes, mean losses and the p-values of the
    one-sided tests (candidate better, candidate worse); None where too few runs differ."""

    scope: str
    n_runs: int
    n_unbiased: int
    candidate_loss: float
    active_loss: float
    p_better: float | None
    p_worse: float | None

    @property
    def improvement(self) -> float:
        """The share of the active model's loss the candidate saves (negative: worse)."""
        return 1.0 - self.candidate_loss / self.active_loss if self.active_loss > 0 else 0.0


def evidence_of(scope: str, pairs: Sequence[PairedLoss], min_runs: int) -> Evidence:
    cand = np.array([p.candidate for p in pairs])
    act = np.array([p.active for p in pairs])
    p_better = p_worse = None
    diff = cand - act
    if len(pairs) >= min_runs and np.count_nonzero(diff) >= min_runs:
        p_better = float(stats.wilcoxon(diff, alternative="less").pvalue)
        p_worse = float(stats.wilcoxon(diff, alternative="greater").pvalue)
    return Evidence(
        scope=scope,
        n_runs=len(pairs),
        n_unbiased=sum(p.unbiased for p in pairs),
        candidate_loss=float(cand.mean()) if cand.size else math.nan,
        active_loss=float(act.mean()) if act.size else math.nan,
        p_better=p_better,
        p_worse=p_worse,
    )


@dataclass(frozen=True)
class Comparison:
    overall: Evidence
    studies: tuple[Evidence, ...]
    runs: str  # which runs were compared, in words

    def verdict(self, alpha: float) -> tuple[bool, str]:
        o = self.overall
        figures = (
            f"pinball loss {o.candidate_loss:.4f} vs the active model's {o.active_loss:.4f} "
            f"on {o.n_runs} {self.runs}"
        )
        worse = [s for s in self.studies if s.p_worse is not None and s.p_worse < alpha]
        if o.p_better is None:
            return False, f"{figures}: too few runs for a paired test; the active model stays"
        if worse:
            names = ", ".join(f"{s.scope} (p={s.p_worse:.3g})" for s in worse)
            return False, f"{figures}: worse in {names}"
        if o.p_better >= alpha:
            return False, f"{figures}: not better with p={o.p_better:.3g} >= {alpha:g}"
        return True, f"{figures}: better with p={o.p_better:.3g} (Wilcoxon, paired by run)"

    def as_dict(self) -> dict[str, Any]:
        def entry(e: Evidence) -> dict[str, Any]:
            out = asdict(e)
            out["improvement"] = round(e.improvement, 4)
            return out

        return {
            "runs": self.runs,
            "overall": entry(self.overall),
            "studies": [entry(s) for s in self.studies],
        }


def compare(
    runs: Iterable[RunRecord],
    candidate_for: Callable[[RunRecord], BundlePredictor],
    active: BundlePredictor,
    weights: dict[str, Weights],
    min_runs: int,
    after_pk: int = 0,
) -> Comparison:
    """The paired comparison on the finished runs newer than `after_pk` (the active model's
    snapshot), or on all of them when fewer than `min_runs` are."""
    finished = [r for r in runs if r.trainable and r.group in weights]
    fresh = [r for r in finished if r.pk > after_pk]
    what = "finished runs the active model never saw"
    if len(fresh) < min_runs:
        fresh, what = finished, "finished runs (the active model trained on some of them)"
    pairs = []
    for run in fresh:
        mine = run_loss(candidate_for(run), run, weights[run.group])
        theirs = run_loss(active, run, weights[run.group])
        if mine is not None and theirs is not None:
            pairs.append(PairedLoss(run.run_id, run.group, run.unbiased, mine, theirs))
    by_group: dict[str, list[PairedLoss]] = {}
    for pair in pairs:
        by_group.setdefault(pair.group, []).append(pair)
    return Comparison(
        overall=evidence_of("all studies", pairs, min_runs),
        studies=tuple(evidence_of(g, p, min_runs) for g, p in sorted(by_group.items())),
        runs=what,
    )
