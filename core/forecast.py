"""The Predictor of a bundle: history -> features -> NumPy network -> quantiles of the finals.

Used by the service (through its loader) and by the training job's evaluation and backtest,
so what is measured offline is exactly what answers online.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from core.bundle import Bundle
from core.calibration import Evidence
from core.features import (
    N_CONTEXT,
    N_TARGETS,
    current_metrics,
    decode_targets,
    encode_history,
    encode_last,
    n_context,
    with_context,
)
from core.network import Network, State
from core.policy.base import Prediction

# Enough for every run that is active at once in a large EA; each entry is a few KB.
DEFAULT_CACHE_RUNS = 4096


class BundlePredictor:
    """Implements `core.policy.Predictor`.

    For a causal network it remembers the state after each history it saw (keyed by the
    history's bytes, and the run's context's for a model that reads one; LRU), so the next
    checkpoint of the same run costs one step.

    `context` (features.encode_context of the run) feeds a model of feature schema 2 or 3 (each
    reads its schema's columns of it); one of schema 1 ignores it. None: the run's configuration
    is unknown.
    """

    def __init__(self, version: str, bundle: Bundle, cache_runs: int = DEFAULT_CACHE_RUNS):
        self.version = version
        architecture = bundle.architecture
        self.network = Network(
            architecture["layers"], int(architecture["n_inputs"]), bundle.weights
        )
        self.levels = np.array(bundle.quantile_levels)
        self.median = int(np.searchsorted(self.levels, 0.5))
        # Fitted on the validation split so that the 80% interval holds 80% of the finals.
        self.interval_scale = float(bundle.manifest["interval_scale"])
        self.context_width = n_context(int(bundle.manifest.get("feature_schema_version", 1)))
        self.reads_context = self.context_width > 0
        self.cache_runs = cache_runs if self.network.causal else 0
        # The training inputs' spread, for the distance of a run's inputs from them (OOD).
        stats = bundle.manifest.get("input_stats") or {}
        width = self.network.n_inputs
        mean, scale = stats.get("mean"), stats.get("scale")
        self.input_mean: np.ndarray | None = None
        self.input_scale: np.ndarray | None = None
        if mean and scale and len(mean) == width and len(scale) == width:
            self.input_mean = np.asarray(mean, dtype=np.float64)
            self.input_scale = np.maximum(np.asarray(scale, dtype=np.float64), 1e-9)
        self.ood_limit = float(stats["limit"]) if stats.get("limit") is not None else None
        # The model's own held-out calibration: each good test run's worst z (manifest).
        calibration = bundle.manifest.get("calibration") or {}
        self.heldout_scores: list[float] = [float(v) for v in calibration.get("good_scores", [])]
        self._cache: OrderedDict[bytes, list[State]] = OrderedDict()
        self._lock = threading.Lock()

    def _inputs(self, rows: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        return with_context(rows, context, self.context_width) if self.reads_context else rows

    def _key(self, history: np.ndarray, context: np.ndarray | None) -> bytes:
        """The cache key of a run's state after `history`."""
        if self.reads_context and context is not None:
            return np.ascontiguousarray(context, dtype=np.float64).tobytes() + history.tobytes()
        return history.tobytes()

    def raw(self, history: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """The network's output (n_outputs,) for the last row of `history`."""
        history = np.ascontiguousarray(history, dtype=np.float64)
        if not self.network.causal:
            x = self._inputs(encode_history(history), context)
            y, _ = self.network.run(x, self.network.start())
            return np.asarray(y[-1])
        states = None
        if self.cache_runs and history.shape[0] > 1:
            with self._lock:
                states = self._cache.get(self._key(history[:-1], context))
        if states is not None:  # one step: only the last row's input is needed
            x = self._inputs(encode_last([history])[0], context)
            y, states = self.network.run(x, states)
        else:
            x = self._inputs(encode_history(history), context)
            y, states = self.network.run(x, self.network.start())
        if self.cache_runs:
            with self._lock:
                self._cache[self._key(history, context)] = states
                if len(self._cache) > self.cache_runs:
                    self._cache.popitem(last=False)
        return np.asarray(y[-1])

    def final_quantiles(self, history: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """(3, n_levels): the predicted finals at each quantile level, sorted (no crossing)."""
        return self._finals(self.raw(history, context), history)

    def _finals(self, raw: np.ndarray, history: np.ndarray) -> np.ndarray:
        raw = raw.reshape(N_TARGETS, self.levels.size)
        return np.sort(decode_targets(raw, current_metrics(history)), axis=1)

    def quantiles_by_step(
        self, history: np.ndarray, context: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, 3, n_levels): `final_quantiles` of every prefix of a history, in one pass."""
        history = np.asarray(history, dtype=np.float64)
        if not self.network.causal:
            return np.stack(
                [self.final_quantiles(history[: k + 1], context) for k in range(len(history))]
            )
        x = self._inputs(encode_history(history), context)
        y, _ = self.network.run(x, self.network.start())
        out = np.empty((len(history), N_TARGETS, self.levels.size))
        for k in range(len(history)):
            raw = y[k].reshape(N_TARGETS, self.levels.size)
            out[k] = np.sort(decode_targets(raw, current_metrics(history[: k + 1])), axis=1)
        return out

    def score_quantiles(
        self, finals: np.ndarray, weights: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """(..., n_levels) score quantiles from (..., 3, n_levels) final quantiles.

        Adding the metrics' quantiles level by level is exact when their errors move together
        and too wide otherwise; `interval_scale`, fitted on held-out runs, corrects the width.
        """
        w = np.asarray(weights, dtype=np.float64)  # (3,), or (..., 3): one set per run
        scores = (w[..., None, :] @ finals)[..., 0, :]  # sum over the 3 targets
        middle = scores[..., self.median : self.median + 1]
        return middle + self.interval_scale * (scores - middle)

    def predict(
        self, history: np.ndarray, weights: Sequence[float], context: np.ndarray | None = None
    ) -> Prediction:
        return self.predict_many([history], [weights], [context])[0]

    def predict_many(
        self,
        histories: Sequence[np.ndarray],
        weights: Sequence[Sequence[float]],
        contexts: Sequence[np.ndarray | None] | None = None,
    ) -> list[Prediction]:
        """`predict` for each run of a batch. The runs whose previous checkpoint this process
        predicted take their next step together (one matmul per layer for all of them)."""
        histories = [np.ascontiguousarray(h, dtype=np.float64) for h in histories]
        if not histories:
            return []
        runs_contexts = list(contexts) if contexts is not None else [None] * len(histories)
        if len(runs_contexts) != len(histories):
            raise ValueError(f"{len(runs_contexts)} contexts for {len(histories)} histories")
        inputs, current = encode_last(histories)  # last rows' inputs, and their metrics
        raws: list[np.ndarray | None] = [None] * len(histories)
        hits: list[tuple[int, list[State]]] = []
        if self.cache_runs and self.network.batches:
            with self._lock:
                for k, history in enumerate(histories):
                    if history.shape[0] > 1:
                        key = self._key(history[:-1], runs_contexts[k])
                        states = self._cache.get(key)
                        if states is not None:
                            hits.append((k, states))
        if hits:
            x = inputs[[k for k, _ in hits]]
            if self.reads_context:
                x = np.concatenate(
                    [
                        x,
                        np.stack(
                            [
                                _context_or_zeros(runs_contexts[k])[: self.context_width]
                                for k, _ in hits
                            ]
                        ),
                    ],
                    axis=1,
                )
            y, stepped = self.network.step_many(x, [states for _, states in hits])
            with self._lock:
                for (k, _), row, states in zip(hits, y, stepped, strict=True):
                    raws[k] = row
                    self._cache[self._key(histories[k], runs_contexts[k])] = states
                while len(self._cache) > self.cache_runs:
                    self._cache.popitem(last=False)
        rows = [
            raw if raw is not None else self.raw(h, c)
            for raw, h, c in zip(raws, histories, runs_contexts, strict=True)
        ]
        ood = self.inputs_distance(inputs, runs_contexts)
        return self._predictions(np.stack(rows), current, weights, ood)

    def inputs_distance(
        self, rows: np.ndarray, contexts: Sequence[np.ndarray | None]
    ) -> np.ndarray | None:
        """How unlike the model's training inputs each run's current input row is: the root
        mean square of its columns' z-scores against the training rows (manifest
        `input_stats`), (B,); None for a model trained before they were recorded."""
        if self.input_mean is None or self.input_scale is None:
            return None
        if self.reads_context:
            wide = np.stack(
                [
                    np.concatenate([row, _context_or_zeros(c)[: self.context_width]])
                    for row, c in zip(rows, contexts, strict=True)
                ]
            )
        else:
            wide = rows
        z = (wide - self.input_mean) / self.input_scale
        return np.asarray(np.sqrt(np.mean(z * z, axis=1)))

    def evidence(
        self,
        history: np.ndarray,
        weights: Sequence[float] | np.ndarray,
        final_score: float,
        context: np.ndarray | None = None,
    ) -> Evidence:
        """A finished run as calibration evidence: this model's forecast at each of its
        checkpoints before the end, and its final score."""
        history = np.asarray(history, dtype=np.float64)
        before = history[:, 0] < 1.0
        if not before.any():
            return Evidence(np.empty(0), np.empty(0), np.empty(0), final_score)
        last = int(np.flatnonzero(before)[-1]) + 1
        scores = self.score_quantiles(self.quantiles_by_step(history[:last], context), weights)
        lo, hi = self._interval_columns()
        return Evidence(
            progress=history[:last, 0].copy(),
            median=scores[:, self.median].copy(),
            width=scores[:, hi] - scores[:, lo],
            final=final_score,
        )

    def _interval_columns(self) -> tuple[int, int]:
        """The quantile columns of the 80% interval (q10, q90)."""
        levels = self.levels.tolist()
        return levels.index(0.1) if 0.1 in levels else 0, (
            levels.index(0.9) if 0.9 in levels else len(levels) - 1
        )

    def _predictions(
        self,
        raws: np.ndarray,
        current: np.ndarray,
        weights: Sequence[Sequence[float]],
        ood: np.ndarray | None = None,
    ) -> list[Prediction]:
        """The forecasts of B runs from the network's outputs raws (B, n_outputs) and their
        current metrics (B, 3), each with its own score weights (B, 3)."""
        n = raws.shape[0]
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n, N_TARGETS):
            raise ValueError(f"expected {N_TARGETS} weights per run, got shape {w.shape}")
        encoded = raws.reshape(n, N_TARGETS, self.levels.size).transpose(1, 0, 2)
        now = current.T[:, :, None]  # (3, B, 1)
        finals = np.sort(decode_targets(encoded, now), axis=2).transpose(1, 0, 2)
        scores = self.score_quantiles(finals, w)
        levels = self.levels.tolist()
        m = self.median
        return [
            Prediction(
                final=(float(f[0, m]), float(f[1, m]), float(f[2, m])),
                score=float(s[m]),
                score_quantiles=dict(zip(levels, s.tolist(), strict=True)),
                model_version=self.version,
                ood=None if ood is None else float(ood[k]),
                ood_limit=self.ood_limit,
            )
            for k, (f, s) in enumerate(zip(finals, scores, strict=True))
        ]


def _context_or_zeros(context: np.ndarray | None) -> np.ndarray:
    return np.zeros(N_CONTEXT) if context is None else np.asarray(context, dtype=np.float64)
