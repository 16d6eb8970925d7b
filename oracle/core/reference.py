"""A study's reference set: its finished runs' metric curves on a fixed grid of progress.

The median rule compares a run with the finished runs *at the same relative progress*. Runs
report at different epochs and have different lengths, so each finished run's curve is
interpolated once, when it joins, onto GRID; a decision then costs an interpolation between
two precomputed thresholds, whatever the number of runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from oracle.core.scoring import StudyPolicy, Weights

GRID_POINTS = 101
GRID = np.linspace(0.0, 1.0, GRID_POINTS)
# Non-finite scores (diverged maps) rank last; a large finite stand-in keeps percentiles finite.
WORST = 1e30

HistoryRow = tuple[int, float | None, float | None, float | None]


def history_array(rows: Sequence[HistoryRow], max_epochs: int) -> np.ndarray:
    """(n, 4) float array of (progress, mqe, te, dead); NaN marks a non-finite metric."""
    out = np.empty((len(rows), 4), dtype=np.float64)
    for i, row in enumerate(rows):
        out[i] = history_row(row, max_epochs)
    return out


def history_row(row: HistoryRow, max_epochs: int) -> tuple[float, float, float, float]:
    """One row of `history_array`."""
    epoch, mqe, te, dead = row
    return (
        epoch / max_epochs,
        math.nan if mqe is None else mqe,
        math.nan if te is None else te,
        math.nan if dead is None else dead,
    )


def curve_on_grid(history: np.ndarray) -> np.ndarray:
    """(GRID_POINTS, 3) metrics of one run, linear in progress, flat outside its checkpoints.

    Between a finite checkpoint and a non-finite one the value is NaN: the map was on its way
    to diverging.
    """
    progress = history[:, 0]
    return np.stack([np.interp(GRID, progress, history[:, k]) for k in (1, 2, 3)], axis=1)


def percentile_scores(scores: np.ndarray, q: float, axis: int = 0) -> np.ndarray:
    finite = np.where(np.isfinite(scores), scores, WORST)
    return np.asarray(np.percentile(finite, q, axis=axis))


@dataclass(frozen=True)
class Thresholds:
    """What a study's policy compares with: per grid point, and for the final score."""

    at_progress: np.ndarray  # (GRID_POINTS,)
    final: float
    n_runs: int

    def at(self, progress: float) -> float:
        return float(np.interp(progress, GRID, self.at_progress))


@dataclass
class ReferenceSet:
    """The finished runs of one study, as grid curves and finals; grows, never shrinks."""

    curves: np.ndarray = field(default_factory=lambda: np.empty((0, GRID_POINTS, 3), np.float32))
    finals: np.ndarray = field(default_factory=lambda: np.empty((0, 3), np.float64))
    _cache: dict[StudyPolicy, Thresholds] = field(default_factory=dict, repr=False)

    @property
    def n_runs(self) -> int:
        return int(self.finals.shape[0])

    def extend(self, runs: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Add (history, final) pairs; `final` is (3,) with NaN for non-finite metrics."""
        runs = list(runs)
        if not runs:
            return
        curves = np.stack([curve_on_grid(h) for h, _ in runs]).astype(np.float32)
        finals = np.stack([f for _, f in runs]).astype(np.float64)
        self.curves = np.concatenate([self.curves, curves])
        self.finals = np.concatenate([self.finals, finals])
        self._cache.clear()

    def final_scores(self, weights: Weights) -> np.ndarray:
        return weights.scores(self.finals)

    def thresholds(self, policy: StudyPolicy) -> Thresholds:
        cached = self._cache.get(policy)
        if cached is not None:
            return cached
        if policy.threshold.mode == "absolute":
            value = policy.threshold.value
            result = Thresholds(np.full(GRID_POINTS, value), value, self.n_runs)
        elif self.n_runs == 0:
            result = Thresholds(np.full(GRID_POINTS, np.inf), float("inf"), 0)
        else:
            w = np.array(
                [
                    policy.weights.mqe,
                    policy.weights.topographic_error,
                    policy.weights.dead_neuron_ratio,
                ],
                dtype=np.float32,
            )
            grid_scores = self.curves @ w  # (n, GRID_POINTS)
            q = policy.threshold.value
            result = Thresholds(
                percentile_scores(grid_scores.astype(np.float64), q, axis=0),
                float(percentile_scores(self.final_scores(policy.weights), q)),
                self.n_runs,
            )
        self._cache[policy] = result
        return result
