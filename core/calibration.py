"""Per-study calibration of the model's stops: how far above the threshold a forecast must be
before a stop loses no more than the study allows of its good runs, measured on its own
unbiased finished runs (split-conformal, one score per run), and the exploration runs that
keep that evidence unbiased.

The stop statistic of a forecast is z = (predicted median score - threshold) / (q90 - q10):
how many interval widths the forecast lies above the threshold. A good run (final score at
or below the threshold) is lost if z exceeds the margin at any checkpoint where a stop may
happen, so each evidence run contributes one number, the largest z along its path. With the
good runs' numbers sorted, the margin is the ceil((n + 1) * confidence)-th: by exchangeability
a new good run of the study is stopped with probability at most 1 - confidence (Mondrian
split-conformal). Fewer good runs than that rank needs: no margin, the model may not stop.

Only runs whose completion did not depend on their own metrics are evidence (exploration
runs, runs that finished in warm-up, imported runs): a run the model let finish is a survivor,
and calibrating on survivors alone would drift the margin down with every stop.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Decisions by these policies depend on the run's metrics (they can stop it): a run that had
# one is not evidence. Everything else (guard, warmup, explore, never, import) cannot stop a
# run on its metrics, so such a run's completion says nothing about how it went.
CONDITIONING_POLICIES = ("oracle", "median")
# Interval widths below this are read as this (a degenerate forecast is not infinitely sure).
MIN_WIDTH = 1e-6


def is_exploration(run_id: str, share: float) -> bool:
    """Whether a run is one of its study's exploration runs: deterministic from its id (the
    same answer in every process, on every retry), a `share` of all ids."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(run_id.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def ranks_needed(confidence: float) -> int:
    """The fewest good runs for which a margin exists at `confidence`."""
    # ceil((n + 1) c) <= n  <=>  n >= c / (1 - c)
    return math.ceil(confidence / (1 - confidence) - 1e-9)


def conformal_rank(n: int, confidence: float) -> int | None:
    """The 1-based rank among n sorted scores that bounds a new one at `confidence`."""
    rank = math.ceil((n + 1) * confidence - 1e-9)
    return rank if rank <= n else None


def statistic(median: np.ndarray, width: np.ndarray, threshold: float) -> np.ndarray:
    """z of forecasts: how many interval widths the predicted median lies above `threshold`."""
    return (median - threshold) / np.maximum(width, MIN_WIDTH)


def statistic_of(median: float, width: float, threshold: float) -> float:
    """`statistic` of one forecast."""
    return (median - threshold) / max(width, MIN_WIDTH)


@dataclass(frozen=True)
class Evidence:
    """One unbiased finished run as one model forecast it: the predicted median score and
    interval width at each checkpoint before its end (with their progress), and its final
    score (+inf for a map that diverged)."""

    progress: np.ndarray  # (k,)
    median: np.ndarray  # (k,)
    width: np.ndarray  # (k,)
    final: float

    def worst(self, threshold: float, min_progress: float) -> float:
        """The largest z along the run's path where a stop could have happened (-inf if none)."""
        where = (self.progress >= min_progress) & (self.progress < 1.0)
        if not where.any():
            return -math.inf
        return float(statistic(self.median[where], self.width[where], threshold).max())


@dataclass(frozen=True)
class Margin:
    """A margin on z and what it rests on."""

    value: float
    n_runs: int  # good evidence runs behind it
    source: str  # "study", "deployment" or "model"

    def describe(self) -> str:
        where = {
            "study": "the study's",
            "deployment": "this deployment's studies'",
            "model": "the model's own held-out",
        }[self.source]
        return f"margin {self.value:.3g} from {self.n_runs} of {where} unbiased finished runs"


def good_scores(evidence: Iterable[Evidence], threshold: float, min_progress: float) -> np.ndarray:
    """The sorted worst z of the evidence runs that ended at or below `threshold`."""
    if not math.isfinite(threshold):
        return np.empty(0)
    worst = [e.worst(threshold, min_progress) for e in evidence if e.final <= threshold]
    return np.sort(np.array(worst, dtype=np.float64))


def margin_of(scores: np.ndarray, confidence: float, source: str) -> Margin | None:
    """The conformal margin from sorted good-run scores; None when there are too few."""
    rank = conformal_rank(len(scores), confidence)
    if rank is None:
        return None
    return Margin(float(scores[rank - 1]), len(scores), source)


@dataclass(frozen=True)
class Margins:
    """What a study's stops may rest on, from the best evidence to the least:

    - `study`: its own unbiased finished runs, when they are enough for a margin;
    - `deployment`: the unbiased finished runs of every study this process serves, pooled
      (z is scale-free), for a study that has too few of its own; never below the largest z
      of the study's own good runs, so its own evidence can only widen it;
    - `model`: the model's held-out runs from its training (manifest), for inputs like its
      training data only: what the model claims of itself, not what this study showed.
    """

    study: Margin | None = None
    deployment: Margin | None = None
    model: Margin | None = None
    own_good: int = 0  # the study's good evidence runs
    needed: int = 0  # good runs needed for a margin of the study's own

    def for_run(self, in_distribution: bool) -> Margin | None:
        if self.study is not None:
            return self.study
        if self.deployment is not None:
            return self.deployment
        if in_distribution and self.model is not None:
            return self.model
        return None


def study_margins(
    own: np.ndarray,
    pooled: np.ndarray,
    confidence: float,
    model_scores: Sequence[float] | None = None,
) -> Margins:
    """Margins from the study's sorted good-run scores, the deployment's (which include the
    study's) and the model's held-out ones (manifest)."""
    study = margin_of(own, confidence, "study")
    deployment = None
    if study is None:
        deployment = margin_of(pooled, confidence, "deployment")
        if deployment is not None and own.size:
            deployment = Margin(
                max(deployment.value, float(own[-1])), deployment.n_runs, "deployment"
            )
    model = None
    if model_scores:
        model = margin_of(np.sort(np.asarray(model_scores, dtype=np.float64)), confidence, "model")
    return Margins(study, deployment, model, int(own.size), ranks_needed(confidence))


class EvidenceSet:
    """One study's evidence runs as one model forecast them; grows, never shrinks. The good
    runs' scores are kept per (threshold, min_progress) until the set or the threshold moves.
    One writer at a time; readers take a snapshot of `runs`."""

    def __init__(self) -> None:
        self.runs: tuple[Evidence, ...] = ()
        self._good: tuple[tuple[int, float, float], np.ndarray] | None = None

    def add(self, evidence: Iterable[Evidence]) -> None:
        self.runs = (*self.runs, *evidence)

    def good(self, threshold: float, min_progress: float) -> np.ndarray:
        runs = self.runs
        key = (len(runs), threshold, min_progress)
        cached = self._good
        if cached is not None and cached[0] == key:
            return cached[1]
        scores = good_scores(runs, threshold, min_progress)
        self._good = (key, scores)
        return scores


def pooled(parts: Iterable[np.ndarray]) -> np.ndarray:
    """Several studies' sorted good-run scores as one sorted array."""
    arrays = [p for p in parts if p.size]
    if not arrays:
        return np.empty(0)
    return np.sort(np.concatenate(arrays))
