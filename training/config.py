"""Every knob of a retraining, with its default and why; saved in the manifest with the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from core.features import FEATURE_SCHEMA_VERSION, SUPPORTED_FEATURE_SCHEMAS

ARCHITECTURES = ("standard", "bidirectional", "lite", "attention")


@dataclass(frozen=True)
class TrainConfig:
    # Which layer stack models.py builds; "lite" won the backtest on the shipped data.
    model: str = "lite"
    # Upper bound; EarlyStopping usually ends far sooner. Enough for 600 runs to converge.
    epochs: int = 200
    # Small batches of whole runs: every run carries ~16 prefixes (a causal model trains on all
    # of them per sequence), so 32 runs is ~500 targets a step.
    batch_size: int = 32
    # With more runs the batch grows so an epoch stays at most this many steps: epoch time and
    # the patience counted in epochs then mean the same at 600 runs and at 10,000.
    max_batches_per_epoch: int = 32
    # Wall-clock budget of `fit`; the best weights so far are kept when it runs out. The
    # scheduled job must end (the target: 10,000 runs retrained in 5 minutes).
    max_train_seconds: float = 240.0
    # Multiplies every hidden layer's units; 1.0 is the seed's sizes (tests use a tiny copy).
    width: float = 1.0
    learning_rate: float = 2e-3
    # The seed's dropout between stacked LSTM layers; stops the standard model memorising.
    dropout: float = 0.2
    # The seed's callbacks: patience in epochs of the validation loss.
    early_stopping_patience: int = 20
    reduce_lr_patience: int = 10
    reduce_lr_factor: float = 0.5
    # One seed for the split, the weight init and the shuffling: a retraining is repeatable.
    seed: int = 7
    # 70/15/15 by run; the test share is what the gate and the reported figures use.
    validation_share: float = 0.15
    test_share: float = 0.15
    # Levels of the quantile outputs. 0.1 is what the default confidence (0.9) stops on;
    # the outer ones let studies ask for 0.95-0.98 confidence without extrapolating.
    quantile_levels: tuple[float, ...] = (0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98)
    # The interval is rescaled on the validation split until this share of finals falls in it.
    interval_coverage: float = 0.8
    # The served spread is the calibrated one times this. The policy stops on the lower
    # quantile, and the runs it must never lose (the best 10%) are the comebacks the model
    # misjudges most: on a 5-fold backtest of the 600 shipped runs, x1 kept 85% of the best
    # 10%, x2 kept 95% while still saving 50% of the epochs (bench/RESULTS-model.md).
    interval_safety: float = 2.0
    # 2: the model reads each run's configuration and length beside its history (what the
    # worker sent in `config`); 1: the history alone (core.features).
    feature_schema: int = FEATURE_SCHEMA_VERSION
    # The share of training runs shown without their configuration (seeded), so that the model
    # learns to answer the runs whose worker sends none, as it will be asked to.
    context_dropout: float = 0.2
    # Runs with more checkpoints are thinned to this many for training (serving takes any
    # length): a worker that checkpoints every epoch of 300 would otherwise slow training 20x.
    max_steps: int = 64
    # Start from the active model when it has this architecture and feature schema (a study
    # of 50 runs fine-tunes what 600 taught, rather than learning SOMs from nothing), with
    # these epochs, learning rate and patience; a cold start uses the ones above.
    warm_start: bool = True
    fine_tune_epochs: int = 40
    fine_tune_learning_rate: float = 5e-4
    fine_tune_patience: int = 6
    # Stopped runs' histories as censored data: their final MQE is at most the last one seen
    # (a SOM's MQE falls as its neighbourhood shrinks), a one-sided term of the loss.
    censored: bool = False
    # The gate: the candidate's recipe forecasts every finished run from a model that never
    # saw it (this many folds, cross-fitted), the active model forecasts the same runs, and
    # the per-run losses are compared paired (training.gate): promoted when the candidate is
    # better with p < gate_alpha and worse in no study with p < gate_alpha.
    gate_folds: int = 3
    gate_alpha: float = 0.05
    gate_min_runs: int = 10
    # The backtest's one figure (reported, no longer the gate): utility = epochs saved -
    # penalty * share of the best 10% that were stopped.
    gate_recall_penalty: float = 2.0
    # Where TensorBoard logs and the best-model checkpoint go (a fresh folder per training).
    log_dir: str = "var/training"
    # Cap on runs read from the database, newest first; bounds memory and training time.
    max_runs: int = 50_000

    def __post_init__(self) -> None:
        if self.model not in ARCHITECTURES:
            raise ValueError(f"model must be one of {ARCHITECTURES}, not {self.model!r}")
        if not 0 < self.validation_share + self.test_share < 1:
            raise ValueError("validation_share + test_share must lie in (0, 1)")
        if 0.5 not in self.quantile_levels:
            raise ValueError("quantile_levels must hold 0.5 (the point prediction)")
        if self.feature_schema not in SUPPORTED_FEATURE_SCHEMAS:
            raise ValueError(f"feature_schema must be one of {SUPPORTED_FEATURE_SCHEMAS}")
        if not 0 <= self.context_dropout < 1:
            raise ValueError("context_dropout must lie in [0, 1)")
        if self.gate_folds < 2:
            raise ValueError("gate_folds must be at least 2")
        if not 0 < self.gate_alpha < 1:
            raise ValueError("gate_alpha must lie in (0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.fine_tune_epochs < 1:
            raise ValueError("epochs and batch_size must be positive")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantile_levels"] = list(self.quantile_levels)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if "quantile_levels" in kwargs:
            kwargs["quantile_levels"] = tuple(kwargs["quantile_levels"])
        return cls(**kwargs)
