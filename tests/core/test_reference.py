"""The reference set's thresholds, kept by merging runs in as they join, against percentiles
taken over the whole set from scratch."""

from __future__ import annotations

import subprocess
import sys
from unittest.mock import patch

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.reference import (
    GRID_POINTS,
    WORST,
    ReferenceSet,
    SortedScores,
    curve_on_grid,
    history_array,
    history_row,
    percentile_of_sorted,
    percentile_scores,
)
from core.scoring import StudyPolicy, Threshold, Weights

metric = st.one_of(
    st.floats(0, 10, allow_nan=False, width=32), st.just(float("nan")), st.just(1e38)
)


@st.composite
def runs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 6))
    progress = sorted(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n, unique=True)))
    rows = [[p, draw(metric), draw(metric), draw(metric)] for p in progress]
    history = np.array(rows, dtype=np.float64)
    return history, history[-1, 1:].copy()


def from_scratch(pairs: list[tuple[np.ndarray, np.ndarray]], policy: StudyPolicy) -> np.ndarray:
    """The thresholds as they were computed before the merge: every run, every time."""
    curves = np.stack([curve_on_grid(h) for h, _ in pairs]).astype(np.float32)
    w = policy.weights.vector().astype(np.float32)
    return percentile_scores((curves @ w).astype(np.float64), policy.threshold.value, axis=0)


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(runs(), min_size=1, max_size=5), min_size=1, max_size=8),
    q=st.floats(0, 100),
    weights=st.tuples(*[st.floats(0, 2, allow_nan=False)] * 3),
    # (RECENT_MIN, RECENT_SHARE): as shipped, runs stay in `recent` below 65; smaller, the
    # percentile is taken across `base` and `recent`, and merges happen often
    recent=st.sampled_from([(64, 64), (1, 1), (2, 3), (4, 2)]),
)
def test_thresholds_kept_by_merging_equal_percentiles_over_the_whole_set(
    batches: list[list[tuple[np.ndarray, np.ndarray]]],
    q: float,
    weights: tuple[float, float, float],
    recent: tuple[int, int],
) -> None:
    with (
        patch.object(SortedScores, "RECENT_MIN", recent[0]),
        patch.object(SortedScores, "RECENT_SHARE", recent[1]),
    ):
        check_thresholds_as_the_set_grows(batches, q, weights)


def check_thresholds_as_the_set_grows(
    batches: list[list[tuple[np.ndarray, np.ndarray]]],
    q: float,
    weights: tuple[float, float, float],
) -> None:
    policy = StudyPolicy(
        weights=Weights(mqe=weights[0], topographic_error=weights[1], dead_neuron_ratio=weights[2]),
        threshold=Threshold(mode="percentile", value=q),
    )
    other = StudyPolicy()  # a second set of weights, merged at other times
    ref = ReferenceSet()
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    for k, batch in enumerate(batches):
        ref.extend(batch)
        seen.extend(batch)
        thresholds = ref.thresholds(policy)
        assert thresholds.n_runs == len(seen) == ref.n_runs
        np.testing.assert_allclose(thresholds.at_progress, from_scratch(seen, policy), rtol=1e-6)
        finals = policy.weights.scores(np.stack([f for _, f in seen]))
        expected = float(percentile_scores(finals, q))
        # a percentile that reaches into the diverged runs (ranked WORST) is no score: +inf
        assert thresholds.final == (expected if expected < WORST * 1e-3 else np.inf)
        if k % 2:
            np.testing.assert_allclose(
                ref.thresholds(other).at_progress, from_scratch(seen, other), rtol=1e-6
            )
    assert ref.curves.shape == (len(seen), GRID_POINTS, 3)
    assert ref.finals.shape == (len(seen), 3)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=1, max_size=40),
    q=st.floats(0, 100),
)
def test_a_percentile_of_sorted_values_is_numpys(values: list[float], q: float) -> None:
    ordered = np.sort(np.array(values))
    assert percentile_of_sorted(ordered, q) == np.percentile(ordered, q)
    rows = np.stack([ordered, ordered[::-1].copy()])
    rows.sort(axis=1)
    np.testing.assert_array_equal(percentile_of_sorted(rows, q), np.percentile(rows, q, axis=1))


def test_thresholds_follow_the_set_as_it_grows_and_are_reused_until_it_does() -> None:
    policy = StudyPolicy()
    ref = ReferenceSet()
    assert ref.thresholds(policy).n_runs == 0
    flat = np.array([[0.0, 1.0, 0.1, 0.0], [1.0, 1.0, 0.1, 0.0]])
    ref.extend([(flat, flat[-1, 1:])])
    first = ref.thresholds(policy)
    assert first is ref.thresholds(policy)  # nothing joined: the same object
    assert first.final == 1.0 + 0.1
    steep = np.array([[0.0, 3.0, 0.1, 0.0], [1.0, 3.0, 0.1, 0.0]])
    ref.extend([(steep, steep[-1, 1:])] * 2)
    second = ref.thresholds(policy)
    assert second.n_runs == 3 and second.final == 3.0 + 0.1  # the median of 1.1, 3.1, 3.1


def test_sorted_scores_find_percentiles_across_base_and_recent() -> None:
    """Ties between `base` and `recent`, every percentile: as np.percentile over the union."""
    rng = np.random.default_rng(3)
    base = np.sort(rng.integers(0, 6, (GRID_POINTS, 40)).astype(np.float64), axis=1)
    recent = np.sort(rng.integers(0, 6, (GRID_POINTS, 7)).astype(np.float64), axis=1)
    scores = SortedScores(base, recent)
    union = np.concatenate([base, recent], axis=1)
    for q in np.linspace(0, 100, 41):
        np.testing.assert_array_equal(scores.percentile(q), np.percentile(union, q, axis=1))


# What the service has done by the time it serves (imports, the model's load and warm-up
# prediction), then what its first decisions do: join finished runs to a study's reference
# set, take the thresholds, decide by the median rule and by the model.
FIRST_DECISIONS = """
import sys
import numpy as np
import service.main
from core import bundle
from core.calibration import EvidenceSet, Margin, Margins, pooled, study_margins
from core.policy import Situation, chain_for, decide
from core.reference import ReferenceSet
from core.scoring import StudyPolicy
from service.serving.loader import load_predictor
from service.serving.reloader import WARMUP_HISTORY

artifact = bundle.DEFAULT_PATH.read_bytes()
model = load_predictor("default", bundle.load(artifact).manifest, artifact)
model.predict(WARMUP_HISTORY, (1.0, 1.0, 0.5))
rng = np.random.default_rng(0)
finished = []
for _ in range(20):
    history = np.column_stack([np.linspace(0.05, 1, 16), rng.random((16, 3))])
    finished.append((history, history[-1, 1:].copy()))
serving = set(sys.modules)

reference = ReferenceSet()
reference.extend(finished)
policy = StudyPolicy()
history = np.column_stack([np.linspace(0.05, 0.5, 8), rng.random((8, 3)) + 1])
evidence = EvidenceSet()
evidence.add(
    model.evidence(h, policy.weights.vector(), float(policy.weights.scores(f[None, :])[0]))
    for h, f in finished
)
thresholds = reference.thresholds(policy)
good = evidence.good(thresholds.final, policy.min_progress)
margins = study_margins(good, pooled([good]), policy.confidence, model.heldout_scores)
margins = Margins(study=Margin(-100.0, 20, "study"))  # calibrated: the model decides
for decider, predictor in (("median", None), ("auto", model)):
    situation = Situation(50, 100, history, policy, thresholds, predictor, margins=margins)
    print(decide(chain_for(decider), situation).policy)
print(sorted(set(sys.modules) - serving))
"""


def test_a_process_first_decisions_import_nothing_on_the_request_path() -> None:
    """A module imported lazily by the first decision holds the event loop meanwhile: the first
    np.percentile imported numpy.ma, 12-21 ms for every request in flight."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_DECISIONS], capture_output=True, text=True, check=True
    )
    median, oracle, imported = done.stdout.strip().splitlines()
    assert (median, oracle) == ("median", "oracle")
    assert imported == "[]"


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 100_000),
            *[st.one_of(st.none(), st.floats())] * 3,  # NaN and ±inf pass through as they are
        ),
        max_size=30,
    ),
    max_epochs=st.integers(1, 100_000),
)
def test_a_history_array_is_its_rows_one_by_one_to_the_bit(
    rows: list[tuple[int, float | None, float | None, float | None]], max_epochs: int
) -> None:
    array = history_array(rows, max_epochs)
    assert array.shape == (len(rows), 4) and array.dtype == np.float64
    one_by_one = np.array([history_row(r, max_epochs) for r in rows]).reshape(len(rows), 4)
    np.testing.assert_array_equal(array, one_by_one)  # NaN where a metric is None
