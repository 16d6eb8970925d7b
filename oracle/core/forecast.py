"""The Predictor of a bundle: history -> features -> NumPy network -> quantiles of the finals.

Used by the service (through its loader) and by the training job's evaluation and backtest,
so what is measured offline is exactly what answers online.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from oracle.core.bundle import Bundle
from oracle.core.features import (
    N_TARGETS,
    current_metrics,
    decode_targets,
    encode_history,
    encode_last,
)
from oracle.core.network import Network, State
from oracle.core.policy.base import Prediction

# Enough for every run that is active at once in a large EA; each entry is a few KB.
DEFAULT_CACHE_RUNS = 4096


class BundlePredictor:
    """Implements `oracle.core.policy.Predictor`.

    For a causal network it remembers the state after each history it saw (keyed by the
    history's bytes, LRU), so the next checkpoint of the same run costs one step.
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
        self.cache_runs = cache_runs if self.network.causal else 0
        self._cache: OrderedDict[bytes, list[State]] = OrderedDict()
        self._lock = threading.Lock()

    def raw(self, history: np.ndarray) -> np.ndarray:
        """The network's output (n_outputs,) for the last row of `history`."""
        history = np.ascontiguousarray(history, dtype=np.float64)
        if not self.network.causal:
            y, _ = self.network.run(encode_history(history), self.network.start())
            return np.asarray(y[-1])
        states = None
        if self.cache_runs and history.shape[0] > 1:
            with self._lock:
                states = self._cache.get(history[:-1].tobytes())
        if states is not None:  # one step: only the last row's input is needed
            y, states = self.network.run(encode_last([history])[0], states)
        else:
            y, states = self.network.run(encode_history(history), self.network.start())
        if self.cache_runs:
            with self._lock:
                self._cache[history.tobytes()] = states
                if len(self._cache) > self.cache_runs:
                    self._cache.popitem(last=False)
        return np.asarray(y[-1])

    def final_quantiles(self, history: np.ndarray) -> np.ndarray:
        """(3, n_levels): the predicted finals at each quantile level, sorted (no crossing)."""
        return self._finals(self.raw(history), history)

    def _finals(self, raw: np.ndarray, history: np.ndarray) -> np.ndarray:
        raw = raw.reshape(N_TARGETS, self.levels.size)
        return np.sort(decode_targets(raw, current_metrics(history)), axis=1)

    def quantiles_by_step(self, history: np.ndarray) -> np.ndarray:
        """(n, 3, n_levels): `final_quantiles` of every prefix of a history, in one pass."""
        history = np.asarray(history, dtype=np.float64)
        if not self.network.causal:
            return np.stack([self.final_quantiles(history[: k + 1]) for k in range(len(history))])
        y, _ = self.network.run(encode_history(history), self.network.start())
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

    def predict(self, history: np.ndarray, weights: Sequence[float]) -> Prediction:
        return self.predict_many([history], [weights])[0]

    def predict_many(
        self, histories: Sequence[np.ndarray], weights: Sequence[Sequence[float]]
    ) -> list[Prediction]:
        """`predict` for each run of a batch. The runs whose previous checkpoint this process
        predicted take their next step together (one matmul per layer for all of them)."""
        histories = [np.ascontiguousarray(h, dtype=np.float64) for h in histories]
        if not histories:
            return []
        inputs, current = encode_last(histories)  # last rows' inputs, and their metrics
        raws: list[np.ndarray | None] = [None] * len(histories)
        hits: list[tuple[int, list[State]]] = []
        if self.cache_runs and self.network.batches:
            with self._lock:
                for k, history in enumerate(histories):
                    if history.shape[0] > 1:
                        states = self._cache.get(history[:-1].tobytes())
                        if states is not None:
                            hits.append((k, states))
        if hits:
            x = inputs[[k for k, _ in hits]]
            y, stepped = self.network.step_many(x, [states for _, states in hits])
            with self._lock:
                for (k, _), row, states in zip(hits, y, stepped, strict=True):
                    raws[k] = row
                    self._cache[histories[k].tobytes()] = states
                while len(self._cache) > self.cache_runs:
                    self._cache.popitem(last=False)
        rows = [
            raw if raw is not None else self.raw(h) for raw, h in zip(raws, histories, strict=True)
        ]
        return self._predictions(np.stack(rows), current, weights)

    def _predictions(
        self, raws: np.ndarray, current: np.ndarray, weights: Sequence[Sequence[float]]
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
            )
            for f, s in zip(finals, scores, strict=True)
        ]
