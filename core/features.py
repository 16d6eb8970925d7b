"""The feature schema shared by training and serving: a history -> model input, and the targets.

Everything is scale-free (MQE relative to the run's own first checkpoint, targets relative to
the current values), so data sets whose MQE differs by 10x train one model. NumPy only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Bump on any change to what `encode_history`, `encode_context` or the target encoding
# computes: a bundle trained on a version not listed in SUPPORTED_FEATURE_SCHEMAS is refused at
# load, so serving never feeds a model features it never saw.
#   1: the history's rows alone (N_FEATURES columns);
#   2: every row followed by the run's context: MiniSom's configuration (N_CONTEXT_V2 columns);
#   3: schema 2's columns, then any trainer's configuration, hashed (HASHED_BUCKETS columns).
FEATURE_SCHEMA_VERSION = 3
SUPPORTED_FEATURE_SCHEMAS = (1, 2, 3)

FEATURES = (
    "progress",
    "log_progress",
    "log_mqe_ratio",
    "topographic_error",
    "dead_ratio",
    "finite",
)
N_FEATURES = len(FEATURES)
TARGETS = ("log_final_mqe_ratio", "final_te_delta", "final_dead_delta")
N_TARGETS = len(TARGETS)

# A run's configuration as the worker sent it (`PUT /v1/runs/{id}`'s `config`, MiniSom's
# parameter names), the same for all its rows. The final MQE and topographic error depend on
# the map's size, sigma and schedules as much as on the first checkpoints: with the config,
# gradient boosting's score MAE at 20% falls by ~17% (bench/mae_floor.py). Anything missing,
# of the wrong type or outside the vocabularies below encodes as zeros, and `config_known` says
# whether the numbers were there: a model trained with some configs hidden copes without.
CONTEXT_CHOICES: dict[str, tuple[str, ...]] = {
    "neighborhood_function": ("gaussian", "mexican_hat", "bubble", "triangle"),
    "topology": ("rectangular", "hexagonal"),
    "activation_distance": ("euclidean", "cosine", "manhattan", "chebyshev"),
    "decay_function": ("inverse_decay_to_zero", "linear_decay_to_zero", "asymptotic_decay"),
    "sigma_decay_function": ("asymptotic_decay", "inverse_decay_to_one", "linear_decay_to_one"),
    "init": ("random", "pca"),
}
CONTEXT_V2 = (
    "log_max_epochs",
    "config_known",
    "log_map_size",
    "log_aspect",
    "sigma_per_side",
    "log_sigma",
    "log_learning_rate",
    *(f"{key}={value}" for key, values in CONTEXT_CHOICES.items() for value in values),
)
N_CONTEXT_V2 = len(CONTEXT_V2)
# Schema 3: a configuration of any SOM library (susi's `n_rows`, somoclu's `radius0`, ...) in a
# fixed number of columns by feature hashing, so a model retrained on a study's own runs can
# learn what its trainer's settings do; the named columns above know MiniSom's alone. A text
# value adds +-1 to the bucket of "key=value"; a number adds its log10 to the bucket of its key.
# Seeds are left out: they say nothing about how a map ends and would only be noise.
HASHED_BUCKETS = 32
HASHED_MAX_KEYS = 64  # a config of more keys is read up to this many (sorted), bounded cost
_SEED_KEYS = ("seed", "random_state")
CONTEXT = (*CONTEXT_V2, *(f"hashed_{i}" for i in range(HASHED_BUCKETS)))
N_CONTEXT = len(CONTEXT)

# Below this MQE a log ratio is meaningless (a perfect fit); clipping keeps it finite.
_MQE_FLOOR = 1e-9
# log10 of progress resolves the log-spaced early checkpoints; clipped so epoch 0 is finite.
_PROGRESS_FLOOR = 1e-3
# Log MQE ratios are clipped to +-LOG_RATIO_LIMIT (x22,000): real data holds blown-up maps
# with MQE 1e31 that would otherwise dominate the loss; past that ratio a run is lost anyway.
LOG_RATIO_LIMIT = 10.0


def _filled(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metrics (n, 3) with non-finite rows forward-filled, and the per-row finite flag.

    A diverged map keeps its last finite values (or neutral ones before any): the model sees
    a flag, never a NaN. Every value of row t depends only on rows <= t (causal).
    """
    metrics = np.array(history[:, 1:4], dtype=np.float64)
    finite: np.ndarray = np.all(np.isfinite(metrics), axis=1)
    if finite.all():  # the common case, and the serving hot path: no Python loop
        return metrics, finite
    last = np.array([1.0, 0.0, 0.0])
    for i in range(metrics.shape[0]):
        if finite[i]:
            last = metrics[i]
        else:
            metrics[i] = last
    return metrics, finite


def current_metrics(history: np.ndarray) -> np.ndarray:
    """The metrics (3,) that the targets are relative to: the last finite row's values."""
    metrics, _ = _filled(history)
    out: np.ndarray = metrics[-1]
    return out


def _clip(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """`np.clip` as two ufuncs: the same values (NaN stays NaN) at half the cost on the few
    numbers of one decision."""
    return np.minimum(np.maximum(x, low), high)


def encode_history(history: np.ndarray) -> np.ndarray:
    """(n, 4) history of (progress, mqe, te, dead; NaN = non-finite) -> (n, N_FEATURES) input.

    Causal: row t of the result depends only on rows <= t, so a model may carry its state
    from one checkpoint to the next, and one pass over a run yields every prefix's input.
    """
    history = np.asarray(history, dtype=np.float64)
    if history.ndim != 2 or history.shape[1] != 4 or history.shape[0] == 0:
        raise ValueError(f"a history is a non-empty (n, 4) array, got shape {history.shape}")
    metrics, finite = _filled(history)
    return _encode_rows(history[:, 0], metrics, metrics[0, 0], finite)


def _encode_rows(
    progress: np.ndarray, metrics: np.ndarray, first_mqe: float | np.ndarray, finite: np.ndarray
) -> np.ndarray:
    """The input rows (n, N_FEATURES) of n checkpoints: their progress (n,), forward-filled
    metrics (n, 3), finite flags (n,), and the MQE of their run's first checkpoint (each
    row's, or one for all)."""
    if not np.isfinite(progress).all():
        progress = np.nan_to_num(progress, nan=0.0, posinf=1.0, neginf=0.0)
    mqe = np.maximum(metrics[:, 0], _MQE_FLOOR)
    out = np.empty((metrics.shape[0], N_FEATURES), dtype=np.float64)
    out[:, 0] = progress
    out[:, 1] = np.log10(np.maximum(progress, _PROGRESS_FLOOR)) / 3.0  # in [-1, 0] for p <= 1
    ratio = mqe / np.maximum(first_mqe, _MQE_FLOOR)
    out[:, 2] = _clip(np.log(ratio), -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    out[:, 3] = metrics[:, 1]
    out[:, 4] = metrics[:, 2]
    out[:, 5] = finite
    return out


def encode_last(histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`encode_history(h)[-1]` (B, N_FEATURES) and `current_metrics(h)` (B, 3) of B histories.

    The serving hot path: a run whose state the model carries needs only its last row's input.
    When a history's first and last rows are finite, that row depends on those two rows alone,
    so the batch is computed in one vectorized pass; the others take the general path.
    """
    if len(histories) == 1:  # the lone checkpoint of a quiet moment: plain floats are faster
        one = _encode_last_one(histories[0])
        if one is not None:
            return one
    firsts = np.array([h[0] for h in histories], dtype=np.float64).reshape(-1, 4)
    lasts = np.array([h[-1] for h in histories], dtype=np.float64).reshape(-1, 4)
    current = np.array(lasts[:, 1:4])
    with np.errstate(invalid="ignore", divide="ignore"):  # rows with inf are redone below
        out = _encode_rows(lasts[:, 0], current, firsts[:, 1], np.ones(len(lasts)))
    simple = np.isfinite(firsts[:, 1:4]).all(axis=1) & np.isfinite(current).all(axis=1)
    # A non-finite first or last row: the forward fill decides what the model sees.
    for k in np.flatnonzero(~simple).tolist():
        out[k] = encode_history(histories[k])[-1]
        current[k] = current_metrics(histories[k])
    return out, current


def _encode_last_one(history: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`encode_last([history])` in plain floats, when its first and last rows are finite:
    `_encode_rows` for one row costs ~15 NumPy calls (17 µs against 3), and a lone checkpoint
    is what one worker's every decision pays. Held equal to it by
    tests/core/test_features.py."""
    first_mqe = float(history[0, 1])
    progress, mqe, te, dead = (float(v) for v in history[-1])
    finite = math.isfinite
    if not (finite(progress) and finite(mqe) and finite(te) and finite(dead)):
        return None
    if not (finite(first_mqe) and finite(float(history[0, 2])) and finite(float(history[0, 3]))):
        return None
    ratio = math.log(max(mqe, _MQE_FLOOR) / max(first_mqe, _MQE_FLOOR))
    row = (
        progress,
        math.log10(max(progress, _PROGRESS_FLOOR)) / 3.0,
        min(max(ratio, -LOG_RATIO_LIMIT), LOG_RATIO_LIMIT),
        te,
        dead,
        1.0,
    )
    return np.array([row]), np.array([[mqe, te, dead]])


def n_context(schema: int) -> int:
    """How many of `encode_context`'s columns a model of this feature schema reads."""
    if schema >= 3:
        return N_CONTEXT
    return N_CONTEXT_V2 if schema == 2 else 0


def n_inputs(schema: int) -> int:
    """The width of a model input row under a feature schema version."""
    return N_FEATURES + n_context(schema)


def _positive(config: Mapping[str, Any], key: str) -> float | None:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond any float: no map is that large
        return None
    return number if math.isfinite(number) and number > 0 else None


def encode_context(config: Mapping[str, Any] | None, max_epochs: int) -> np.ndarray:
    """A run's planned length and configuration -> (N_CONTEXT,) columns appended to each of its
    rows (schema 2).

    Total: any mapping (or None) gives a finite vector; what is missing or unknown is zeros.
    """
    out = np.zeros(N_CONTEXT, dtype=np.float64)
    out[0] = math.log10(max(max_epochs, 1)) / 3.0  # 1 .. 1000 epochs -> 0 .. 1
    if not isinstance(config, Mapping):
        return out
    x, y = _positive(config, "x"), _positive(config, "y")
    sigma, rate = _positive(config, "sigma"), _positive(config, "learning_rate")
    if x is not None and y is not None and sigma is not None and rate is not None:
        out[1] = 1.0
        out[2] = _limit((math.log(x) + math.log(y)) / 5.0)  # 2x2 .. 40x40 maps -> 0.3 .. 1.5
        out[3] = _limit(math.log(x) - math.log(y))
        out[4] = _limit(sigma / max(x, y))
        out[5] = _limit(math.log10(sigma))
        out[6] = _limit(math.log10(rate))
    column = 7
    for key, values in CONTEXT_CHOICES.items():
        value = config.get(key)
        if isinstance(value, str) and value in values:
            out[column + values.index(value)] = 1.0
        column += len(values)
    _hash_config(config, out[N_CONTEXT_V2:])
    return out


def _bucket(text: str) -> tuple[int, float]:
    """A stable bucket and sign for `text` (Python's hash() changes with every process)."""
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()
    number = int.from_bytes(digest, "big")
    return number % HASHED_BUCKETS, 1.0 if (number >> 63) & 1 else -1.0


def _hash_config(config: Mapping[str, Any], out: np.ndarray) -> None:
    """Add a configuration's settings into `out` (HASHED_BUCKETS,): see HASHED_BUCKETS."""
    items = sorted((str(k), v) for k, v in config.items())[:HASHED_MAX_KEYS]
    for key, value in items:
        if any(part in key.lower() for part in _SEED_KEYS) or key == "max_epochs":
            continue  # max_epochs has its own column
        if isinstance(value, bool | str):
            bucket, sign = _bucket(f"{key}={str(value).lower()}"[:256])
            out[bucket] += sign
        elif isinstance(value, int | float):
            number = _finite_float(value)
            if number is None:
                continue
            bucket, sign = _bucket(key[:256])
            magnitude = math.log10(abs(number)) if number != 0 else -LOG_RATIO_LIMIT
            out[bucket] += sign * _limit(magnitude)
    np.clip(out, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT, out=out)


def _finite_float(value: int | float) -> float | None:
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond any float
        return None
    return number if math.isfinite(number) else None


def _limit(value: float) -> float:
    """A context number kept within +-LOG_RATIO_LIMIT, like the history's log ratios: an absurd
    configuration (sigma 1e300) gives the network a bounded input, never an inf."""
    return min(max(value, -LOG_RATIO_LIMIT), LOG_RATIO_LIMIT)


def with_context(
    rows: np.ndarray, context: np.ndarray | None, width: int = N_CONTEXT
) -> np.ndarray:
    """Input rows (n, N_FEATURES) -> (n, N_FEATURES + width): the first `width` columns of the
    context on every row (`n_context` of the model's feature schema).

    None: nothing is known of the run, all zeros. A caller that knows the run's length passes
    `encode_context(None, max_epochs)` instead, as the service does and as training hides a
    config."""
    out = np.zeros((rows.shape[0], N_FEATURES + width), dtype=np.float64)
    out[:, :N_FEATURES] = rows
    if context is not None:
        out[:, N_FEATURES:] = context[:width]
    return out


def encode_targets(history: np.ndarray, final: np.ndarray) -> np.ndarray:
    """(n, N_TARGETS): the finals (3,) relative to each row's current values."""
    metrics, _ = _filled(np.asarray(history, dtype=np.float64))
    final = np.asarray(final, dtype=np.float64)
    out = np.empty((metrics.shape[0], N_TARGETS), dtype=np.float64)
    ratio = np.log(max(final[0], _MQE_FLOOR) / np.maximum(metrics[:, 0], _MQE_FLOOR))
    out[:, 0] = _clip(ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    out[:, 1] = final[1] - metrics[:, 1]
    out[:, 2] = final[2] - metrics[:, 2]
    return out


def decode_targets(encoded: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Inverse of `encode_targets` for one row's current metrics, on any trailing shape.

    `encoded` is (3, ...) (e.g. (3, n_quantiles)); every map is monotonic, so quantiles of
    the encoded targets decode to quantiles of the finals. TE and dead are clipped to [0, 1].
    """
    encoded = np.asarray(encoded, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if cur.ndim == 1:  # one run's (3,); a batch passes (3, B, 1) against (3, B, n_quantiles)
        cur = cur.reshape((3,) + (1,) * (encoded.ndim - 1))
    out = np.empty_like(encoded)
    ratio = _clip(encoded[0], -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    out[0] = np.maximum(cur[0], _MQE_FLOOR) * np.exp(ratio)
    out[1:] = _clip(cur[1:] + encoded[1:], 0.0, 1.0)
    return out
