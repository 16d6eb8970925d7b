"""Serving speed: the NumPy predictor vs Keras `model.predict` on the same weights.

    python bench/inference_speed.py [--steps 16] [--keras-calls 30] [--numpy-calls 2000]
                                    [--feature-schema 2]

Per architecture: median seconds of one prediction for a history of `--steps` checkpoints by
Keras predict, by the NumPy predictor over the whole history, and by the NumPy predictor when
the run's state is carried from its previous checkpoint (what the service does for a run that
reports checkpoint after checkpoint).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from core.bundle import Bundle
from core.features import (
    FEATURE_SCHEMA_VERSION,
    N_TARGETS,
    SUPPORTED_FEATURE_SCHEMAS,
    encode_context,
    encode_history,
    n_context,
    n_inputs,
    with_context,
)
from core.forecast import BundlePredictor
from training import models
from training.config import TrainConfig

WEIGHTS = (1.0, 1.0, 0.5)
# A run as a worker describes it (the first run of data/minisom_runs.jsonl.gz).
MAX_EPOCHS = 20
CONFIG = {
    "x": 14,
    "y": 15,
    "sigma": 1.4615,
    "learning_rate": 0.40138,
    "neighborhood_function": "triangle",
    "topology": "rectangular",
    "activation_distance": "manhattan",
    "decay_function": "linear_decay_to_zero",
    "sigma_decay_function": "asymptotic_decay",
    "init": "random",
}


def median_seconds(call: Callable[[], object], n: int) -> float:
    call()  # warm-up (Keras builds its predict function on the first call)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def history_of(steps: int) -> np.ndarray:
    progress = np.geomspace(1 / 100, 1.0, steps) * 0.5
    mqe = 2.0 * np.exp(-3 * progress) + 0.5
    return np.column_stack([progress, mqe, 0.3 - 0.1 * progress, 0.2 - 0.05 * progress])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--keras-calls", type=int, default=30)
    parser.add_argument("--numpy-calls", type=int, default=2000)
    parser.add_argument("--models", default="lite,standard,attention,bidirectional")
    parser.add_argument(
        "--feature-schema",
        type=int,
        choices=SUPPORTED_FEATURE_SCHEMAS,
        default=FEATURE_SCHEMA_VERSION,
        help="2: rows carry the run's configuration (the default model); 1: the history alone",
    )
    args = parser.parse_args()
    levels = TrainConfig().quantile_levels
    history = history_of(args.steps)
    print(
        f"history of {args.steps} checkpoints; median of {args.keras_calls} Keras calls and "
        f"{args.numpy_calls} NumPy calls\n"
    )
    print("| model | Keras predict | NumPy, whole history | ratio | NumPy, state carried | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        line = row(name, levels, history, args.keras_calls, args.numpy_calls, args.feature_schema)
        print(line, flush=True)


def row(
    name: str,
    levels: tuple[float, ...],
    history: np.ndarray,
    n_keras: int,
    n_np: int,
    schema: int = FEATURE_SCHEMA_VERSION,
) -> str:
    """One architecture's line, under the feature schema the service serves (by default)."""
    context = encode_context(CONFIG, MAX_EPOCHS)
    rows = encode_history(history)
    x = (with_context(rows, context, n_context(schema)) if schema >= 2 else rows)[None].astype(
        np.float32
    )
    spec = models.architecture(name, N_TARGETS * len(levels), 0.2, n_inputs=n_inputs(schema))
    model = models.build(spec, seed=1)
    manifest = {
        "architecture": spec,
        "feature_schema_version": schema,
        "quantile_levels": list(levels),
        "interval_scale": 1.0,
    }
    weights = models.export_weights(model, spec)
    full = BundlePredictor("bench", Bundle(manifest, weights), cache_runs=0)
    carried = BundlePredictor("bench", Bundle(manifest, weights))
    keras_s = median_seconds(lambda: model.predict(x, verbose=0), n_keras)
    full_s = median_seconds(lambda: full.predict(history, WEIGHTS, context), n_np)
    step_s = full_s
    if carried.network.causal:
        times = []
        for _ in range(n_np):
            carried._cache.clear()
            carried.predict(history[:-1], WEIGHTS, context)  # the run's previous checkpoint
            started = time.perf_counter()
            carried.predict(history, WEIGHTS, context)
            times.append(time.perf_counter() - started)
        step_s = statistics.median(times)
    return (
        f"| {name} | {keras_s * 1e3:.1f} ms | {full_s * 1e6:.0f} µs | {keras_s / full_s:.0f}x "
        f"| {step_s * 1e6:.0f} µs | {keras_s / step_s:.0f}x |"
    )


if __name__ == "__main__":
    main()
