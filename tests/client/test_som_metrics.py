"""som_metrics on a real MiniSom map (MiniSom comes with the `training` extra)."""

from __future__ import annotations

import math

import pytest

from oracle_client import som_metrics

minisom = pytest.importorskip("minisom")
np = pytest.importorskip("numpy")


def test_som_metrics_measures_a_real_map_in_reports_order() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(60, 3))
    som = minisom.MiniSom(6, 6, 3, sigma=1.0, learning_rate=0.5, random_seed=1)
    before = som_metrics(som, data)
    som.train(data, 600, random_order=True)
    after = som_metrics(som, data)
    mqe, te, dead = after
    assert mqe == pytest.approx(som.quantization_error(data))
    assert 0 <= te <= 1 and 0 <= dead <= 1
    assert after.mqe < before.mqe
    hits = som.activation_response(data)
    assert dead == pytest.approx(float((hits == 0).sum()) / hits.size)
    assert all(math.isfinite(v) for v in after)
