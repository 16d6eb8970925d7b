"""A study's reference set as it grows: what one refresh of the cache costs the event loop.

    python bench/reference_scale.py [--sizes 1000,10000,100000] [--joining 10] [--repeat 15]

Each refresh brings the runs that finished since the last one (`--joining` of them) and the
next checkpoint asks for the study's thresholds again. Timed per size, alternately: the
reference set as it is (`core.reference.ReferenceSet`: sorted scores per set of
weights, merged) and as it was before (the arrays concatenated, then `np.percentile` over
every run at each grid point). Medians and maxima of `--repeat` refreshes (a maximum is
where the set merged its recent runs); both must give the same thresholds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from core.reference import GRID_POINTS, ReferenceSet, curve_on_grid, percentile_scores
from core.scoring import StudyPolicy


def random_runs(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 20))
        progress = np.sort(rng.random(k))
        metrics = rng.random((k, 3)) * np.linspace(2.0, 1.0, k)[:, None]
        history = np.column_stack([progress, metrics])
        out.append((history, history[-1, 1:].copy()))
    return out


class Before:
    """The reference set before: every refresh concatenated the arrays, and a policy's
    thresholds were percentiles over every run, recomputed after each refresh."""

    def __init__(self) -> None:
        self.curves = np.empty((0, GRID_POINTS, 3), np.float32)

    def extend(self, runs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        curves = np.stack([curve_on_grid(h) for h, _ in runs]).astype(np.float32)
        self.curves = np.concatenate([self.curves, curves])

    def thresholds(self, policy: StudyPolicy) -> np.ndarray:
        w = policy.weights.vector().astype(np.float32)
        scores = (self.curves @ w).astype(np.float64)
        return percentile_scores(scores, policy.threshold.value, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--joining", type=int, default=10, help="runs that join per refresh")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    policy = StudyPolicy()
    print("| runs in the set | before: ms a refresh (max) | now: ms a refresh (max) | medians |")
    print("| --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        now, before = ReferenceSet(), Before()
        for start in range(0, size, 5_000):
            chunk = random_runs(rng, min(5_000, size - start))
            now.extend(chunk)
            before.extend(chunk)
        now.thresholds(policy)  # the set as the cache holds it: scores sorted once
        times: dict[str, list[float]] = {"now": [], "before": []}
        for _ in range(args.repeat):
            joining = random_runs(rng, args.joining)
            t0 = time.perf_counter()
            now.extend(joining)
            at_progress = now.thresholds(policy).at_progress
            t1 = time.perf_counter()
            before.extend(joining)
            expected = before.thresholds(policy)
            t2 = time.perf_counter()
            times["now"].append(t1 - t0)
            times["before"].append(t2 - t1)
            np.testing.assert_allclose(at_progress, expected, rtol=1e-6)
        b, n = (statistics.median(times[k]) * 1e3 for k in ("before", "now"))
        b_max, n_max = (max(times[k]) * 1e3 for k in ("before", "now"))
        print(
            f"| {size:,} + {args.repeat} x {args.joining} | {b:.2f} ({b_max:.1f}) "
            f"| {n:.2f} ({n_max:.1f}) | {b / n:.1f}x |"
        )


if __name__ == "__main__":
    main()
