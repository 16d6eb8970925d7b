"""Serving parity: the NumPy forward pass equals Keras on the same weights, every architecture."""

from __future__ import annotations

import numpy as np
import pytest

from core.bundle import Bundle
from core.features import N_FEATURES, N_TARGETS
from core.forecast import BundlePredictor
from core.network import Network
from tests.training.conftest import LEVELS
from training import models
from training.dataset import MASK_VALUE

ARCHITECTURES = ["standard", "bidirectional", "lite", "attention"]
N_SEQUENCES = 200
MAX_STEPS = 24


@pytest.fixture(scope="module", params=ARCHITECTURES)
def keras_model(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    spec = models.architecture(request.param, N_TARGETS * len(LEVELS), 0.2)
    model = models.build(spec, seed=1)
    rng = np.random.default_rng(2)
    # Initial weights are too tame (zero biases); perturb them so every path matters.
    model.set_weights(
        [w + rng.normal(0, 0.2, w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    return spec, model


def test_numpy_forward_pass_equals_keras(keras_model) -> None:  # type: ignore[no-untyped-def]
    spec, model = keras_model
    network = Network(spec["layers"], spec["n_inputs"], models.export_weights(model, spec))
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, MAX_STEPS + 1, N_SEQUENCES)
    x = np.full((N_SEQUENCES, MAX_STEPS, N_FEATURES), MASK_VALUE, dtype=np.float32)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.normal(0, 1, (n, N_FEATURES))
    expected = np.asarray(model(x, training=False))
    worst = 0.0
    for i, n in enumerate(lengths):
        out, _ = network.run(x[i, :n].astype(np.float64), network.start())
        if spec["causal"]:
            worst = max(worst, float(np.abs(out - expected[i, :n]).max()))
        else:
            worst = max(worst, float(np.abs(out[-1] - expected[i]).max()))
    assert worst <= 1e-5, f"{spec['name']}: max abs difference {worst:.2e}"


def test_carried_state_equals_a_full_pass(keras_model) -> None:  # type: ignore[no-untyped-def]
    spec, model = keras_model
    manifest = {"architecture": spec, "quantile_levels": list(LEVELS), "interval_scale": 1.0}
    cached = BundlePredictor("v", Bundle(manifest, models.export_weights(model, spec)))
    fresh = BundlePredictor("v", Bundle(manifest, models.export_weights(model, spec)), cache_runs=0)
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(2, 16))
        history = np.column_stack(
            [np.sort(rng.uniform(0, 1, n)), rng.uniform(0.1, 5, n), rng.uniform(0, 1, (n, 2))]
        )
        for k in range(1, n + 1):
            # equal up to float32 rounding (one row's input projection vs many rows'), held
            # to the same 1e-5 as the parity with Keras
            np.testing.assert_allclose(
                cached.raw(history[:k]), fresh.raw(history[:k]), rtol=0, atol=1e-5
            )


def test_a_batch_of_runs_steps_together_as_each_would_alone(keras_model) -> None:  # type: ignore[no-untyped-def]
    """BundlePredictor.predict_many: runs whose previous checkpoint was predicted advance in
    one batched step; the forecasts equal predict's, run by run."""
    spec, model = keras_model
    manifest = {"architecture": spec, "quantile_levels": list(LEVELS), "interval_scale": 1.0}
    weights = models.export_weights(model, spec)
    batched = BundlePredictor("v", Bundle(manifest, weights))
    alone = BundlePredictor("v", Bundle(manifest, weights), cache_runs=0)
    rng = np.random.default_rng(5)
    histories = []
    for n in rng.integers(2, 14, 12):
        histories.append(
            np.column_stack(
                [np.sort(rng.uniform(0, 1, n)), rng.uniform(0.1, 5, n), rng.uniform(0, 1, (n, 2))]
            )
        )
    for h in histories[:9]:  # three runs are new to the batched predictor: full passes
        batched.predict(h[:-1], (1.0, 1.0, 0.5))
    w = [(1.0, 1.0, 0.5), (2.0, 0.5, 0.0)] * 6
    got = batched.predict_many(histories, w)
    for h, weights_, prediction in zip(histories, w, got, strict=True):
        expected = alone.predict(h, weights_)
        np.testing.assert_allclose(prediction.final, expected.final, rtol=1e-5, atol=1e-5)
        assert prediction.score == pytest.approx(expected.score, rel=1e-5, abs=1e-5)
    assert batched.network.batches == (spec["name"] in ("lite", "standard"))
    # the next checkpoint of every run: all twelve now step together from their cached states
    step = np.array([0.01, 0.0, 0.0, 0.0])
    longer = [np.vstack([h, h[-1] + step]) for h in histories]
    np.testing.assert_allclose(
        [p.final for p in batched.predict_many(longer, w)],
        [alone.predict(h, ww).final for h, ww in zip(longer, w, strict=True)],
        rtol=1e-5,
        atol=1e-5,
    )
