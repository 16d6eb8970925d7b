"""Feature schema 2: a model that reads each run's configuration, from training to serving.

The same history under two configurations gets two forecasts; every path of the predictor (a
whole history, a carried state, a batch) feeds the same context; a schema-1 bundle still
serves, ignoring it; and training rows carry it, hidden for the share of runs it is told to.
"""

from __future__ import annotations

import numpy as np
import pytest

from core import bundle
from core.errors import ModelUnavailable
from core.features import N_FEATURES, encode_context, encode_history, n_inputs
from core.forecast import BundlePredictor
from tests.training.conftest import random_bundle
from training.dataset import Inputs, RunRecord, step_arrays

WEIGHTS = (1.0, 1.0, 0.5)
SMALL = {"x": 6, "y": 4, "sigma": 0.8, "learning_rate": 0.05, "neighborhood_function": "bubble"}
LARGE = {"x": 30, "y": 30, "sigma": 9.0, "learning_rate": 0.9, "init": "pca"}


def _predictor(name: str = "lite", schema: int = 2, cache: bool = True) -> BundlePredictor:
    loaded = bundle.load(random_bundle(name, schema=schema))
    return BundlePredictor("v", loaded, cache_runs=4096 if cache else 0)


def _history(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [np.sort(rng.uniform(0, 1, n)), rng.uniform(0.1, 5, n), rng.uniform(0, 1, (n, 2))]
    )


@pytest.mark.parametrize("name", ["lite", "standard", "attention", "bidirectional"])
def test_the_configuration_changes_the_forecast(name: str) -> None:
    predictor = _predictor(name)
    history = _history(6, seed=1)
    small = predictor.predict(history, WEIGHTS, encode_context(SMALL, 100))
    large = predictor.predict(history, WEIGHTS, encode_context(LARGE, 100))
    unknown = predictor.predict(history, WEIGHTS, None)
    assert len({small.score, large.score, unknown.score}) == 3
    assert predictor.predict(history, WEIGHTS, encode_context(SMALL, 100)) == small


@pytest.mark.parametrize("name", ["lite", "standard", "attention"])
def test_carried_states_and_batches_feed_each_run_its_own_context(name: str) -> None:
    """Two runs with the very same history but different configurations: the cache keeps a
    state for each, and every path equals a whole pass with that run's context."""
    carried, fresh = _predictor(name), _predictor(name, cache=False)
    history = _history(9, seed=2)
    contexts = [encode_context(SMALL, 80), encode_context(LARGE, 80), None]
    for k in range(1, len(history) + 1):
        got = carried.predict_many([history[:k]] * 3, [WEIGHTS] * 3, contexts)
        for context, prediction in zip(contexts, got, strict=True):
            expected = fresh.predict(history[:k], WEIGHTS, context)
            np.testing.assert_allclose(prediction.final, expected.final, rtol=1e-5, atol=1e-5)
        assert len({p.score for p in got}) == 3
    # one at a time, from the cached states, equals the batch
    for context in contexts:
        one = carried.predict(history, WEIGHTS, context)
        expected = fresh.predict(history, WEIGHTS, context)
        assert one.score == pytest.approx(expected.score, rel=1e-5, abs=1e-5)
    whole = fresh.raw(history, contexts[0])
    by_step = fresh.quantiles_by_step(history, contexts[0])[-1]
    np.testing.assert_allclose(by_step, fresh.final_quantiles(history, contexts[0]), atol=1e-9)
    assert whole.shape == (fresh.network.n_outputs,)


def test_a_schema_1_model_still_serves_and_ignores_the_context() -> None:
    predictor = _predictor(schema=1)
    assert not predictor.reads_context and predictor.network.n_inputs == N_FEATURES
    history = _history(5, seed=3)
    with_config = predictor.predict(history, WEIGHTS, encode_context(LARGE, 50))
    assert with_config == predictor.predict(history, WEIGHTS, None)


def test_a_bundle_whose_width_disagrees_with_its_schema_is_refused() -> None:
    artifact = random_bundle(schema=1)
    loaded = bundle.load(artifact)
    claims_2 = {**loaded.manifest, "feature_schema_version": 2}
    with pytest.raises((ModelUnavailable, ValueError), match="features, not"):
        bundle.dump(claims_2, loaded.weights)


def _run(run_id: str, config: dict[str, object] | None, seed: int) -> RunRecord:
    history = _history(6, seed)
    history[-1, 0] = 1.0
    epochs = np.round(history[:, 0] * 50).astype(np.int64)
    epochs[-1] = 50
    final = history[-1, 1:4].copy()
    return RunRecord(run_id, "g", 50, epochs, history, final, config)


def test_training_rows_carry_the_context_and_hide_it_for_a_share_of_runs() -> None:
    runs = [_run(f"r{i}", SMALL if i % 2 else LARGE, seed=i) for i in range(200)]
    plain = step_arrays(runs, max_steps=64)
    assert plain.x.shape[2] == N_FEATURES
    wide = step_arrays(runs, max_steps=64, inputs=Inputs(schema=3))
    assert wide.x.shape[2] == n_inputs(3)
    np.testing.assert_array_equal(wide.x[:, :, :N_FEATURES], plain.x)
    for i, run in enumerate(runs):
        np.testing.assert_allclose(wide.x[i, 0, :N_FEATURES], encode_history(run.history)[0])
        np.testing.assert_allclose(wide.x[i, :6, N_FEATURES:], np.tile(run.context, (6, 1)))
    hidden = step_arrays(runs, 64, Inputs(schema=3, context_dropout=0.25, seed=3))
    unknown = [
        np.allclose(hidden.x[i, 0, N_FEATURES:], encode_context(None, 50)) for i in range(len(runs))
    ]
    assert 0.15 < np.mean(unknown) < 0.35  # seeded: the same runs every time
    again = step_arrays(runs, 64, Inputs(schema=3, context_dropout=0.25, seed=3))
    np.testing.assert_array_equal(hidden.x, again.x)
