"""A study's reference set: its finished runs' metric curves on a fixed grid of progress.

The median rule compares a run with the finished runs *at the same relative progress*. Runs
report at different epochs and have different lengths, so each finished run's curve is
interpolated once, when it joins, onto GRID; a decision then costs an interpolation between
two precomputed thresholds, whatever the number of runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from core.scoring import StudyPolicy, Weights

GRID_POINTS = 101
GRID = np.linspace(0.0, 1.0, GRID_POINTS)
# Non-finite scores (diverged maps) rank last; a large finite stand-in keeps percentiles finite.
WORST = 1e30

HistoryRow = tuple[int, float | None, float | None, float | None]


def history_array(rows: Sequence[HistoryRow], max_epochs: int) -> np.ndarray:
    """(n, 4) float array of (progress, mqe, te, dead); NaN marks a non-finite metric.

    The rows of `history_row` to the bit, in one conversion (NumPy reads None as NaN, and an
    epoch divides exactly as in Python) rather than a Python loop over the rows: loading the
    600 imported runs into four reference sets took 40.0 -> 38.2 ms (medians of 15, one-off),
    most of the rest being the SQL read."""
    out = np.array(rows, dtype=np.float64).reshape(len(rows), 4)
    out[:, 0] /= max_epochs
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


def ranked(scores: np.ndarray) -> np.ndarray:
    """`scores` with each non-finite one (a diverged map's) as WORST: it ranks last."""
    return np.where(np.isfinite(scores), scores, WORST)


def percentile_scores(scores: np.ndarray, q: float, axis: int = 0) -> np.ndarray:
    """The plain definition, np.percentile of the ranked scores: what tests and benchmarks
    check ReferenceSet's thresholds against. Not for serving: a process's first np.percentile
    imports numpy.ma (np.unique asks it whether the array is masked), 12-21 ms that held
    the event loop at the first decision of the median rule (bench/RESULTS-service.md)."""
    return np.asarray(np.percentile(ranked(scores), q, axis=axis))


def percentile_of_sorted(values: np.ndarray, q: float) -> np.ndarray:
    """np.percentile(values, q, axis=-1) (its default, linear method) of rows already sorted
    along the last axis: two reads a row, not a selection over it."""
    n = values.shape[-1]
    lo, t = _virtual_index(q, n)
    return _lerp(values[..., lo], values[..., min(lo + 1, n - 1)], t)


def _virtual_index(q: float, n: int) -> tuple[int, float]:
    virtual = q / 100 * (n - 1)
    lo = math.floor(virtual)
    return lo, virtual - lo


def _lerp(below: np.ndarray, above: np.ndarray, t: float) -> np.ndarray:
    # numpy's: from the nearer end, so that t = 1 gives `above` exactly
    diff = above - below
    return np.asarray(above - diff * (1 - t) if t >= 0.5 else below + diff * t)


@dataclass(frozen=True)
class SortedScores:
    """Each grid point's scores of a set of runs, in order: most of them in `base`, merged
    long ago, and the runs that joined since in `recent`, each row sorted.

    A run that joins is sorted into `recent` (small); `recent` is merged into `base` once it
    holds more than max(RECENT_MIN, 1/RECENT_SHARE of `base`) runs. So a merge (linear in the
    set's size) comes once per that many runs, and a percentile is found from where each of
    `recent`'s scores falls in `base` (a binary search each), not by sorting or selecting
    over the whole set. Immutable: a reader on another thread keeps a consistent snapshot.
    """

    base: np.ndarray  # (GRID_POINTS, m)
    recent: np.ndarray  # (GRID_POINTS, r)

    RECENT_MIN: ClassVar[int] = 64
    RECENT_SHARE: ClassVar[int] = 64

    @property
    def n(self) -> int:
        return int(self.base.shape[1] + self.recent.shape[1])

    def with_runs(self, scores: np.ndarray) -> SortedScores:
        """The same with the runs whose grid scores are `scores` (GRID_POINTS, k)."""
        recent = np.concatenate([self.recent, scores], axis=1)
        recent.sort(axis=1)
        if recent.shape[1] <= max(self.RECENT_MIN, self.base.shape[1] // self.RECENT_SHARE):
            return SortedScores(self.base, recent)
        merged = np.concatenate([self.base, recent], axis=1)
        merged.sort(axis=1, kind="stable")  # two sorted runs per row: one merge pass
        return SortedScores(merged, recent[:, :0])

    def percentile(self, q: float) -> np.ndarray:
        """np.percentile over all the runs, per grid point (its default, linear method)."""
        base, recent = self.base, self.recent
        if recent.shape[1] == 0 or base.shape[1] == 0:
            return percentile_of_sorted(recent if base.shape[1] == 0 else base, q)
        n = self.n
        lo, t = _virtual_index(q, n)
        # Where each recent score sits in the union: its place in `base`, plus the recent
        # scores before it (a recent score goes before equal base scores: still in order).
        rows = np.arange(base.shape[0])
        at = np.stack([np.searchsorted(b, r) for b, r in zip(base, recent, strict=True)])
        at += np.arange(recent.shape[1])

        def kth(k: int) -> np.ndarray:
            hit = at == k
            in_base = k - (at < k).sum(axis=1)
            from_base = base[rows, np.minimum(in_base, base.shape[1] - 1)]
            return np.where(hit.any(axis=1), recent[rows, hit.argmax(axis=1)], from_base)

        return _lerp(kth(lo), kth(min(lo + 1, n - 1)), t)


@dataclass(frozen=True)
class Thresholds:
    """What a study's policy compares with: per grid point, and for the final score."""

    at_progress: np.ndarray  # (GRID_POINTS,)
    # The percentile of the study's final scores, stopped runs counted as worse than any
    # (they are censored: their final is unknown, and they were stopped as bad). Counting only
    # the runs that were let finish would make the threshold a survivor's, lower with every
    # stop, until the good runs themselves are stopped.
    final: float
    n_runs: int
    n_censored: int = 0

    def at(self, progress: float) -> float:
        return float(np.interp(progress, GRID, self.at_progress))


@dataclass(frozen=True)
class _Runs:
    """The set's arrays with room to grow: rows [:n] are the runs, the rest unused. Replaced
    whole when a run joins, so a reader on another thread sees one consistent set."""

    curves: np.ndarray  # (capacity, GRID_POINTS, 3) float32
    finals: np.ndarray  # (capacity, 3) float64
    n: int


class ReferenceSet:
    """The finished runs of one study, as grid curves and finals; grows, never shrinks.

    A policy's thresholds are percentiles, at each of the GRID_POINTS, over every run of the
    set, and runs join a few at a time (each refresh of the cache brings those that finished
    since). So each set of weights keeps its runs' grid scores sorted per grid point
    (SortedScores): the new runs are sorted into a small part of their own, merged into the
    rest once it holds 1/64 of it. With np.percentile over the whole set after each refresh,
    a study of 10,000 runs held the event loop ~33 ms a refresh; now ~3 ms
    (bench/reference_scale.py). Room to grow is doubled as needed, so adding k runs copies
    k runs, not the set.
    """

    def __init__(self) -> None:
        self._runs = _Runs(
            np.empty((0, GRID_POINTS, 3), np.float32), np.empty((0, 3), np.float64), 0
        )
        self._thresholds: dict[StudyPolicy, Thresholds] = {}
        self._sorted: dict[Weights, SortedScores] = {}
        # Runs of the study that were stopped (their finals unknown): see Thresholds.final.
        self.censored = 0

    @property
    def n_runs(self) -> int:
        return self._runs.n

    @property
    def curves(self) -> np.ndarray:
        runs = self._runs
        return runs.curves[: runs.n]

    @property
    def finals(self) -> np.ndarray:
        runs = self._runs
        return runs.finals[: runs.n]

    def extend(self, runs: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Add (history, final) pairs; `final` is (3,) with NaN for non-finite metrics.
        One thread at a time (ReferenceCache holds its lock); readers may run meanwhile."""
        runs = list(runs)
        if not runs:
            return
        old = self._runs
        n = old.n + len(runs)
        curves, finals = old.curves, old.finals
        if n > curves.shape[0]:  # rows past old.n are nobody's yet: writing them is safe
            capacity = max(n, 2 * curves.shape[0], 16)
            curves = np.empty((capacity, GRID_POINTS, 3), np.float32)
            finals = np.empty((capacity, 3), np.float64)
            curves[: old.n] = old.curves[: old.n]
            finals[: old.n] = old.finals[: old.n]
        curves[old.n : n] = np.stack([curve_on_grid(h) for h, _ in runs])
        finals[old.n : n] = np.stack([f for _, f in runs])
        self._runs = _Runs(curves, finals, n)

    def thresholds(self, policy: StudyPolicy) -> Thresholds:
        runs = self._runs  # one snapshot: another thread may extend the set meanwhile
        censored = self.censored
        cached = self._thresholds.get(policy)
        if cached is not None and cached.n_runs == runs.n and cached.n_censored == censored:
            return cached
        if policy.threshold.mode == "absolute":
            value = policy.threshold.value
            result = Thresholds(np.full(GRID_POINTS, value), value, runs.n, censored)
        elif runs.n == 0:
            result = Thresholds(np.full(GRID_POINTS, np.inf), float("inf"), 0, censored)
        else:
            q = policy.threshold.value
            finals = np.sort(ranked(policy.weights.scores(runs.finals[: runs.n])))
            if censored:
                finals = np.concatenate([finals, np.full(censored, WORST)])
            final = float(percentile_of_sorted(finals, q))
            if final >= WORST * 1e-3:  # it reaches into the runs ranked last: not a score
                final = math.inf
            result = Thresholds(
                self._sorted_grid_scores(runs, policy.weights).percentile(q),
                final,
                runs.n,
                censored,
            )
        self._thresholds[policy] = result
        return result

    def _sorted_grid_scores(self, runs: _Runs, weights: Weights) -> SortedScores:
        """The grid scores of the snapshot's n runs, sorted; non-finite as WORST."""
        sorted_scores = self._sorted.get(weights)
        if sorted_scores is None or sorted_scores.n > runs.n:  # none yet, or a newer snapshot's
            empty = np.empty((GRID_POINTS, 0))
            sorted_scores = SortedScores(empty, empty)
        have = sorted_scores.n
        if have < runs.n:
            w = weights.vector().astype(np.float32)
            new = (runs.curves[have : runs.n] @ w).astype(np.float64).T  # (GRID_POINTS, k)
            sorted_scores = sorted_scores.with_runs(ranked(new))
            self._sorted[weights] = sorted_scores
        return sorted_scores
