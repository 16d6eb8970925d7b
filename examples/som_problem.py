"""The SOM search that the integration examples and benchmarks solve: a standardized data set,
MiniSom's configuration space, and one training that reports at log-spaced checkpoints."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from oracle_client import SomMetrics, som_metrics

DATASETS = ("iris", "wine")
CHECKPOINTS = 16  # as the shipped model's training data: log-spaced, epoch 1 and the last
WEIGHTS = (1.0, 1.0, 0.5)  # the Oracle's default study score: mqe + te + 0.5 * dead

# MiniSom's parameter names, so the Oracle's model reads the config. The ranges are those of
# the shipped model's training data, with maps kept small (<= 16 x 16) for speed.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "neighborhood_function": ("gaussian", "triangle", "mexican_hat", "bubble"),
    "topology": ("rectangular", "hexagonal"),
    "activation_distance": ("euclidean", "cosine", "manhattan"),
    "decay_function": ("linear_decay_to_zero", "inverse_decay_to_zero", "asymptotic_decay"),
    "sigma_decay_function": ("inverse_decay_to_one", "linear_decay_to_one", "asymptotic_decay"),
    "init": ("random", "pca"),
}
MAP_SIDE = (4, 16)
SIGMA = (0.3, 8.0)
LEARNING_RATE = (0.01, 2.0)  # drawn log-uniformly


def load(name: str) -> np.ndarray:
    """A scikit-learn data set with standardized features."""
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    loaders = {"iris": datasets.load_iris, "wine": datasets.load_wine}
    return np.asarray(StandardScaler().fit_transform(loaders[name]().data), dtype=np.float64)


def checkpoint_epochs(max_epochs: int, count: int = CHECKPOINTS) -> list[int]:
    """The first geometric grid from 1 to max_epochs with `count` distinct rounded epochs."""
    if max_epochs <= count:
        return list(range(1, max_epochs + 1))
    n = count
    while True:
        epochs = np.unique(np.round(np.geomspace(1, max_epochs, n)).astype(int))
        if len(epochs) >= count:
            return [int(e) for e in epochs]
        n += 1


def score(metrics: SomMetrics) -> float:
    """The Oracle's default study score (lower is better); +inf for a diverged map."""
    total = 0.0
    for weight, value in zip(WEIGHTS, metrics, strict=True):
        if value is None or not math.isfinite(value):
            return math.inf
        total += weight * value
    return total


def random_config(rng: np.random.Generator) -> dict[str, Any]:
    """One configuration drawn uniformly from the space (the learning rate log-uniformly)."""
    config: dict[str, Any] = {
        "x": int(rng.integers(MAP_SIDE[0], MAP_SIDE[1] + 1)),
        "y": int(rng.integers(MAP_SIDE[0], MAP_SIDE[1] + 1)),
        "sigma": float(rng.uniform(*SIGMA)),
        "learning_rate": float(10 ** rng.uniform(*np.log10(LEARNING_RATE))),
    }
    for name, choices in CATEGORIES.items():
        config[name] = str(rng.choice(choices))
    return config


def mutate(config: dict[str, Any], rng: np.random.Generator, rate: float) -> dict[str, Any]:
    """A child: each gene changes with probability `rate`; numbers move by a Gaussian step
    (the learning rate on a log scale), categories are drawn anew."""
    child = dict(config)
    for side in ("x", "y"):
        if rng.random() < rate:
            child[side] = int(np.clip(child[side] + rng.normal(0, 2.0), *MAP_SIDE).round())
    if rng.random() < rate:
        child["sigma"] = float(np.clip(child["sigma"] * math.exp(rng.normal(0, 0.4)), *SIGMA))
    if rng.random() < rate:
        lr = child["learning_rate"] * math.exp(rng.normal(0, 0.6))
        child["learning_rate"] = float(np.clip(lr, *LEARNING_RATE))
    for name, choices in CATEGORIES.items():
        if rng.random() < rate:
            child[name] = str(rng.choice(choices))
    return child


def crossover(a: dict[str, Any], b: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Uniform crossover: each gene from either parent."""
    return {key: (a[key] if rng.random() < 0.5 else b[key]) for key in a}


@dataclass(frozen=True)
class Trained:
    """How one training went: the epochs it ran and the map's metrics at its last checkpoint."""

    epochs: int
    metrics: SomMetrics
    stopped: bool  # the callback asked to stop before max_epochs

    @property
    def score(self) -> float:
        return score(self.metrics)


def train(
    config: dict[str, Any],
    data: np.ndarray,
    max_epochs: int,
    seed: int,
    on_checkpoint: Callable[[int, SomMetrics], bool] | None = None,
) -> Trained:
    """Train one map epoch by epoch (one epoch = one pass over the data in a seeded order);
    at each checkpoint, call `on_checkpoint(epoch, metrics)`, and stop if it returns True."""
    from minisom import MiniSom

    with warnings.catch_warnings():
        # MiniSom warns of combinations it still trains (a triangle on a hexagonal map...):
        # a search draws them on purpose.
        warnings.simplefilter("ignore", UserWarning)
        som = MiniSom(
            config["x"],
            config["y"],
            data.shape[1],
            sigma=config["sigma"],
            learning_rate=config["learning_rate"],
            neighborhood_function=config["neighborhood_function"],
            topology=config["topology"],
            activation_distance=config["activation_distance"],
            decay_function=config["decay_function"],
            sigma_decay_function=config["sigma_decay_function"],
            random_seed=seed,
        )
    if config["init"] == "pca":
        som.pca_weights_init(data)
    else:
        som.random_weights_init(data)
    order = np.random.default_rng(seed)
    total, t = max_epochs * len(data), 0
    report_at = set(checkpoint_epochs(max_epochs))
    metrics = SomMetrics(math.nan, math.nan, math.nan)
    with np.errstate(all="ignore"):  # a diverging map overflows: its NaN metrics are reported
        for epoch in range(1, max_epochs + 1):
            for i in order.permutation(len(data)):
                som.update(data[i], som.winner(data[i]), t, total)
                t += 1
            if epoch in report_at:
                metrics = som_metrics(som, data)
                if on_checkpoint is not None and on_checkpoint(epoch, metrics):
                    return Trained(epoch, metrics, stopped=epoch < max_epochs)
    return Trained(max_epochs, metrics, stopped=False)
