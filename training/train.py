"""Fit one architecture: seeds, quantile (pinball) loss, the seed's callbacks, TensorBoard logs.

Reads top to bottom: arrays -> model -> fit with callbacks -> best weights, exported by name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from core.features import N_TARGETS, n_inputs
from training import models
from training.config import TrainConfig
from training.dataset import (
    MASK_VALUE,
    Arrays,
    Inputs,
    RunRecord,
    censored_arrays,
    prefix_arrays,
    step_arrays,
)

log = structlog.get_logger()


@dataclass(frozen=True)
class Trained:
    spec: dict[str, Any]
    weights: dict[str, np.ndarray]
    epochs_run: int
    best_val_loss: float
    seconds: float
    n_train_runs: int
    n_censored_runs: int = 0
    warm_start: bool = False


def pinball_loss(levels: Sequence[float]) -> Any:
    """Mean quantile loss over targets and levels; outputs are target-major (t * Q + q)."""
    from keras import ops

    taus = ops.convert_to_tensor(np.asarray(levels, dtype=np.float32))
    n_levels = len(levels)

    def pinball(y_true: Any, y_pred: Any) -> Any:
        shape = ops.shape(y_pred)
        pred = ops.reshape(y_pred, (*shape[:-1], N_TARGETS, n_levels))
        err = ops.expand_dims(ops.cast(y_true, pred.dtype), -1) - pred
        loss = ops.maximum(taus * err, (taus - 1.0) * err)
        return ops.mean(loss, axis=(-2, -1))

    return pinball


def censored_pinball_loss(levels: Sequence[float]) -> Any:
    """`pinball_loss` for targets that carry a censoring flag as a 4th column: a flagged
    sample's MQE target is an upper bound (the final MQE is at most it), so only a quantile
    above it is wrong, priced as pinball prices it; its other targets are unknown."""
    from keras import ops

    taus = ops.convert_to_tensor(np.asarray(levels, dtype=np.float32))
    n_levels = len(levels)

    def pinball(y_true: Any, y_pred: Any) -> Any:
        shape = ops.shape(y_pred)
        pred = ops.reshape(y_pred, (*shape[:-1], N_TARGETS, n_levels))
        y_true = ops.cast(y_true, pred.dtype)
        flag = y_true[..., N_TARGETS]
        err = ops.expand_dims(y_true[..., :N_TARGETS], -1) - pred
        full = ops.mean(ops.maximum(taus * err, (taus - 1.0) * err), axis=(-2, -1))
        above = ops.maximum((taus - 1.0) * err[..., 0, :], 0.0)  # quantiles above the bound
        bound = ops.mean(above, axis=-1) / N_TARGETS
        return flag * bound + (1.0 - flag) * full

    return pinball


def with_censored(finished: Arrays, censored: Arrays) -> Arrays:
    """One set of causal arrays of finished and censored runs, the flag as a 4th target."""
    length = max(finished.x.shape[1], censored.x.shape[1])

    def padded(a: Arrays, flag: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, t = a.x.shape[:2]
        x = np.full((n, length, a.x.shape[2]), MASK_VALUE, dtype=np.float32)
        y = np.zeros((n, length, N_TARGETS + 1), dtype=np.float32)
        w = np.zeros((n, length), dtype=np.float32)
        x[:, :t], y[:, :t, :N_TARGETS], w[:, :t] = a.x, a.y, a.weight
        y[:, :, N_TARGETS] = flag
        return x, y, w

    parts = [padded(finished, 0.0), padded(censored, 1.0)]
    return Arrays(*(np.concatenate(p) for p in zip(*parts, strict=True)))


def arrays_for(
    spec: dict[str, Any],
    runs: Sequence[RunRecord],
    config: TrainConfig,
    context_dropout: float = 0.0,
) -> Arrays:
    """Causal models learn from every prefix in one pass; others need explicit prefixes."""
    make = step_arrays if spec["causal"] else prefix_arrays
    return make(runs, config.max_steps, Inputs(config.feature_schema, context_dropout, config.seed))


def spec_for(config: TrainConfig) -> dict[str, Any]:
    """The layer list a training of `config` builds."""
    return models.architecture(
        config.model,
        N_TARGETS * len(config.quantile_levels),
        config.dropout,
        config.width,
        n_inputs(config.feature_schema),
    )


def fit(
    config: TrainConfig,
    train: Sequence[RunRecord],
    validation: Sequence[RunRecord],
    log_dir: Path,
    verbose: int = 0,
    initial: dict[str, np.ndarray] | None = None,
) -> Trained:
    """Fit on `train`'s finished runs (and, with config.censored and a causal model, its
    stopped ones), early-stopped on `validation`'s; from `initial` weights (a bundle of this
    architecture) when given, with the fine-tuning epochs and learning rate."""
    import keras

    started = time.perf_counter()
    levels = config.quantile_levels
    spec = spec_for(config)
    fit_arrays = arrays_for(spec, train, config, config.context_dropout)
    val_arrays = arrays_for(spec, validation, config)
    if len(fit_arrays.x) == 0 or len(val_arrays.x) == 0:
        raise ValueError("training needs finished runs in both the train and validation split")
    loss = pinball_loss(levels)
    n_censored = 0
    if config.censored and spec["causal"]:
        inputs = Inputs(config.feature_schema, 0.0, config.seed)
        censored = censored_arrays(train, config.max_steps, inputs)
        n_censored = len(censored.x)
        if n_censored:
            fit_arrays = with_censored(fit_arrays, censored)
            val_arrays = with_censored(val_arrays, censored_arrays([], 1, inputs))
            loss = censored_pinball_loss(levels)

    model = models.build(spec, config.seed)
    warm = initial is not None
    if initial is not None:
        models.import_weights(model, spec, initial)
    epochs = config.fine_tune_epochs if warm else config.epochs
    patience = config.fine_tune_patience if warm else config.early_stopping_patience
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=config.fine_tune_learning_rate if warm else config.learning_rate
        ),
        loss=loss,
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    best = log_dir / "best.weights.h5"
    batch_size = max(config.batch_size, -(-len(fit_arrays.x) // config.max_batches_per_epoch))

    class TimeBudget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if time.perf_counter() - started > config.max_train_seconds:
                log.warning("training_time_budget_reached", epoch=epoch + 1)
                self.model.stop_training = True

    callbacks: list[keras.callbacks.Callback] = [
        TimeBudget(),
        keras.callbacks.ModelCheckpoint(
            str(best), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            patience=max(1, min(config.reduce_lr_patience, patience // 2)),
            factor=config.reduce_lr_factor,
            min_lr=1e-5,
        ),
        keras.callbacks.CSVLogger(str(log_dir / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(log_dir / "tensorboard")),
    ]
    history = model.fit(
        fit_arrays.x,
        fit_arrays.y,
        sample_weight=fit_arrays.weight,
        validation_data=(val_arrays.x, val_arrays.y, val_arrays.weight),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    model.load_weights(str(best))  # the best validation epoch, not the last one
    val_losses = history.history["val_loss"]
    seconds = time.perf_counter() - started
    log.info(
        "model_fitted",
        model=config.model,
        epochs=len(val_losses),
        best_val_loss=min(val_losses),
        seconds=round(seconds, 1),
        train_sequences=len(fit_arrays.x),
        censored_sequences=n_censored,
        warm_start=warm,
        batch_size=batch_size,
    )
    return Trained(
        spec=spec,
        weights=models.export_weights(model, spec),
        epochs_run=len(val_losses),
        best_val_loss=float(min(val_losses)),
        seconds=seconds,
        n_train_runs=sum(1 for r in train if r.trainable),
        n_censored_runs=n_censored,
        warm_start=warm,
    )
