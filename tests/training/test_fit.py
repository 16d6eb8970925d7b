"""What a fit learns from: stopped runs as censored data when asked, and the active model's
weights as the starting point of a fine-tune."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from core import bundle
from core.features import N_TARGETS
from training import pipeline, train
from training.config import TrainConfig
from training.dataset import RunRecord, censored_arrays, split_runs

TINY = TrainConfig(model="lite", width=0.1, epochs=1, fine_tune_epochs=1, batch_size=64)
LEVELS = TINY.quantile_levels


def _stopped(runs: list[RunRecord], n: int) -> list[RunRecord]:
    """Finished runs cut after their 5th checkpoint, as the service stores a stopped run."""
    return [
        dataclasses.replace(
            r,
            epochs=r.epochs[:5],
            history=r.history[:5],
            final=np.full(3, np.nan),
            censored=True,
            unbiased=False,
        )
        for r in runs[:n]
    ]


def test_a_censored_sample_costs_only_quantiles_above_its_bound() -> None:
    loss = train.censored_pinball_loss(LEVELS)
    taus = np.asarray(LEVELS)
    bound = np.zeros((1, N_TARGETS + 1), dtype=np.float32)
    bound[0, N_TARGETS] = 1.0  # censored: the final MQE (log ratio) is at most 0
    below = np.full((1, N_TARGETS * len(LEVELS)), -0.5, dtype=np.float32)
    assert float(np.asarray(loss(bound, below))[0]) == pytest.approx(0.0)
    above = np.zeros((1, N_TARGETS * len(LEVELS)), dtype=np.float32)
    above[0, : len(LEVELS)] = 0.3  # the MQE quantiles above the bound; TE and dead unknown
    above[0, len(LEVELS) :] = 5.0
    want = np.mean((1 - taus) * 0.3) / N_TARGETS
    assert float(np.asarray(loss(bound, above))[0]) == pytest.approx(want, rel=1e-5)
    # Unflagged: the ordinary pinball loss.
    plain = np.zeros((1, N_TARGETS + 1), dtype=np.float32)
    np.testing.assert_allclose(
        np.asarray(loss(plain, above)), np.asarray(train.pinball_loss(LEVELS)(plain[:, :3], above))
    )


def test_censored_arrays_bound_the_mqe_by_the_last_one_seen(runs: list[RunRecord]) -> None:
    stopped = _stopped([r for r in runs if r.trainable], 4)
    arrays = censored_arrays(stopped, 64)
    assert arrays.x.shape[:2] == (4, 5) and arrays.weight.sum() == 20
    for i, run in enumerate(stopped):
        mqe = run.history[:, 1]
        np.testing.assert_allclose(arrays.y[i, :, 0], np.log(mqe[-1] / mqe), rtol=1e-5)
    assert censored_arrays([r for r in runs if r.trainable][:3], 64).x.shape[0] == 0


@pytest.mark.slow
def test_stopped_runs_reach_the_training_set_when_enabled(
    small_runs: list[RunRecord], tmp_path: Path
) -> None:
    finished = [r for r in small_runs if r.trainable]
    split = split_runs(finished, 0.2, 0.0, seed=1)
    stopped = _stopped(split.train, 10)
    off = train.fit(TINY, [*split.train, *stopped], split.validation, tmp_path / "off")
    assert off.n_censored_runs == 0
    on_config = dataclasses.replace(TINY, censored=True)
    on = train.fit(on_config, [*split.train, *stopped], split.validation, tmp_path / "on")
    assert on.n_censored_runs == 10 and on.n_train_runs == off.n_train_runs
    assert any(not np.allclose(on.weights[k], off.weights[k]) for k in on.weights)


@pytest.mark.slow
def test_a_fine_tune_starts_from_the_given_weights(
    small_runs: list[RunRecord], tmp_path: Path
) -> None:
    finished = [r for r in small_runs if r.trainable]
    split = split_runs(finished, 0.2, 0.0, seed=1)
    start = train.fit(TINY, split.train, split.validation, tmp_path / "start")
    still = dataclasses.replace(TINY, fine_tune_learning_rate=1e-9)
    tuned = train.fit(
        still, split.train, split.validation, tmp_path / "tuned", initial=start.weights
    )
    assert tuned.warm_start and not start.warm_start
    for name, value in start.weights.items():
        np.testing.assert_allclose(tuned.weights[name], value, atol=1e-5)


def test_a_warm_start_needs_the_same_architecture_and_schema() -> None:
    spec = train.spec_for(TINY)
    weights = {"0.kernel": np.zeros(1)}
    same = bundle.Bundle(
        {
            "architecture": spec,
            "feature_schema_version": TINY.feature_schema,
            "quantile_levels": list(LEVELS),
        },
        weights,
    )
    assert pipeline.warm_start_weights(TINY, spec, same) is weights
    assert (
        pipeline.warm_start_weights(dataclasses.replace(TINY, warm_start=False), spec, same) is None
    )
    wider = train.spec_for(dataclasses.replace(TINY, width=0.2))
    assert pipeline.warm_start_weights(TINY, wider, same) is None
    older = bundle.Bundle({**same.manifest, "feature_schema_version": 2}, weights)
    assert pipeline.warm_start_weights(TINY, spec, older) is None
    assert pipeline.warm_start_weights(TINY, spec, None) is None
