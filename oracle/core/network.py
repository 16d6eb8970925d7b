"""The NumPy forward pass of the bundled architectures: a layer list + named arrays -> outputs.

The architecture is a JSON-able list of layer specs (the bundle's manifest carries it), read
by training to build the Keras model and here to run it without TensorFlow. Causal networks
carry a state between calls, so a run's next checkpoint costs one step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

LayerSpec = Mapping[str, Any]
State = Any

ACTIVATIONS = ("linear", "relu", "tanh")
# Keras' LayerNormalization default; parity with the trained model depends on it.
LAYER_NORM_EPSILON = 1e-3


class Layer(Protocol):
    causal: bool

    def start(self) -> State: ...

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """(T, d_in) -> (T, d_out), continuing from `state`; returns the state after x."""
        ...


def _take(weights: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in weights:
        raise ValueError(f"weight {key!r} is missing")
    array = np.asarray(weights[key], dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"weight {key!r} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"weight {key!r} holds non-finite values")
    return array


class Dense:
    causal = True

    def __init__(self, spec: LayerSpec, d_in: int, weights: Mapping[str, np.ndarray], key: str):
        self.units = int(spec["units"])
        self.activation = str(spec.get("activation", "linear"))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        self.kernel = _take(weights, f"{key}.kernel", (d_in, self.units))
        self.bias = _take(weights, f"{key}.bias", (self.units,))

    def start(self) -> State:
        return None

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        y = x @ self.kernel + self.bias
        if self.activation == "relu":
            y = np.maximum(y, 0.0)
        elif self.activation == "tanh":
            y = np.tanh(y)
        return y, None


class LSTM:
    """Keras' LSTM (gates i, f, c, o; tanh and sigmoid), the input projection done for all
    steps in one matmul; sigmoid(x) = (1 + tanh(x/2)) / 2 lets one tanh serve all four gates.
    """

    causal = True

    def __init__(self, spec: LayerSpec, d_in: int, weights: Mapping[str, np.ndarray], key: str):
        u = self.units = int(spec["units"])
        kernel = _take(weights, f"{key}.kernel", (d_in, 4 * u))
        recurrent = _take(weights, f"{key}.recurrent_kernel", (u, 4 * u))
        bias = _take(weights, f"{key}.bias", (4 * u,))
        self.scale = np.concatenate([np.full(2 * u, 0.5), np.ones(u), np.full(u, 0.5)])
        self.offset = np.concatenate([np.full(2 * u, 0.5), np.zeros(u), np.full(u, 0.5)])
        self.kernel = kernel * self.scale
        self.recurrent = recurrent * self.scale
        self.bias = bias * self.scale

    def start(self) -> State:
        return np.zeros(self.units), np.zeros(self.units)

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        h, c = state
        u = self.units
        z = x @ self.kernel + self.bias
        out = np.empty((x.shape[0], u))
        recurrent, scale, offset = self.recurrent, self.scale, self.offset
        for t in range(x.shape[0]):
            a = np.tanh(z[t] + h @ recurrent) * scale + offset
            c = a[u : 2 * u] * c + a[:u] * a[2 * u : 3 * u]
            h = a[3 * u :] * np.tanh(c)
            out[t] = h
        return out, (h, c)


class BiLSTM:
    """Keras' Bidirectional(LSTM), outputs concatenated [forward, backward]; sees the future,
    so it is not causal: it runs over the whole history at every call."""

    causal = False

    def __init__(self, spec: LayerSpec, d_in: int, weights: Mapping[str, np.ndarray], key: str):
        self.sequences = bool(spec.get("sequences", True))
        self.forward = LSTM(spec, d_in, weights, f"{key}.forward")
        self.backward = LSTM(spec, d_in, weights, f"{key}.backward")
        self.units = 2 * self.forward.units

    def start(self) -> State:
        return None

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        fwd, _ = self.forward.run(x, self.forward.start())
        bwd, _ = self.backward.run(x[::-1], self.backward.start())
        if self.sequences:
            return np.concatenate([fwd, bwd[::-1]], axis=1), None
        return np.concatenate([fwd[-1:], bwd[-1:]], axis=1), None


class CausalAttention:
    """Keras' MultiHeadAttention over the steps so far (causal mask), residual, LayerNorm.

    Its state is the keys and values of the steps seen, so a new step attends to all of them.
    """

    causal = True

    def __init__(self, spec: LayerSpec, d_in: int, weights: Mapping[str, np.ndarray], key: str):
        h, k = self.heads, self.key_dim = int(spec["heads"]), int(spec["key_dim"])
        self.units = d_in
        self.wq = _take(weights, f"{key}.query.kernel", (d_in, h, k)).reshape(d_in, h * k)
        self.bq = _take(weights, f"{key}.query.bias", (h, k)).reshape(h * k)
        self.wk = _take(weights, f"{key}.key.kernel", (d_in, h, k)).reshape(d_in, h * k)
        self.bk = _take(weights, f"{key}.key.bias", (h, k)).reshape(h * k)
        self.wv = _take(weights, f"{key}.value.kernel", (d_in, h, k)).reshape(d_in, h * k)
        self.bv = _take(weights, f"{key}.value.bias", (h, k)).reshape(h * k)
        self.wo = _take(weights, f"{key}.output.kernel", (h, k, d_in)).reshape(h * k, d_in)
        self.bo = _take(weights, f"{key}.output.bias", (d_in,))
        self.gamma = _take(weights, f"{key}.norm.gamma", (d_in,))
        self.beta = _take(weights, f"{key}.norm.beta", (d_in,))
        self.wq = self.wq / np.sqrt(k)  # Keras scales the query by 1/sqrt(key_dim)
        self.bq = self.bq / np.sqrt(k)

    def start(self) -> State:
        empty = np.empty((0, self.heads, self.key_dim))
        return empty, empty

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        n, (h, k) = x.shape[0], (self.heads, self.key_dim)
        q = (x @ self.wq + self.bq).reshape(n, h, k)
        keys = np.concatenate([state[0], (x @ self.wk + self.bk).reshape(n, h, k)])
        values = np.concatenate([state[1], (x @ self.wv + self.bv).reshape(n, h, k)])
        past = keys.shape[0] - n
        logits = np.einsum("qhk,thk->hqt", q, keys)
        visible = np.arange(keys.shape[0])[None, :] <= (past + np.arange(n))[:, None]
        logits = np.where(visible[None], logits, -np.inf)
        logits -= logits.max(axis=-1, keepdims=True)
        attention = np.exp(logits)
        attention /= attention.sum(axis=-1, keepdims=True)
        mixed = np.einsum("hqt,thk->qhk", attention, values).reshape(n, h * k)
        y = x + mixed @ self.wo + self.bo
        mean = y.mean(axis=-1, keepdims=True)
        var = y.var(axis=-1, keepdims=True)
        y = (y - mean) / np.sqrt(var + LAYER_NORM_EPSILON) * self.gamma + self.beta
        return y, (keys, values)


LAYERS: dict[str, type[Dense] | type[LSTM] | type[BiLSTM] | type[CausalAttention]] = {
    "dense": Dense,
    "lstm": LSTM,
    "bilstm": BiLSTM,
    "attention": CausalAttention,
}


class Network:
    """A stack of layers built from an architecture's layer list and its named weights."""

    def __init__(self, layers: Sequence[LayerSpec], n_inputs: int, weights: Mapping[str, Any]):
        self.layers: list[Layer] = []
        width = n_inputs
        for i, spec in enumerate(layers):
            kind = spec.get("kind")
            if kind not in LAYERS:
                raise ValueError(f"layer {i}: unknown kind {kind!r}")
            layer = LAYERS[kind](spec, width, weights, str(i))
            self.layers.append(layer)
            width = layer.units
        extra = sorted(set(weights) - set(expected_weight_names(layers)))
        if extra:
            raise ValueError(f"unexpected weights {extra}")
        self.n_inputs = n_inputs
        self.n_outputs = width
        self.causal = all(layer.causal for layer in self.layers)

    def start(self) -> list[State]:
        return [layer.start() for layer in self.layers]

    def run(self, x: np.ndarray, states: list[State]) -> tuple[np.ndarray, list[State]]:
        """(T, n_inputs) -> outputs of the last layer; (T, out) if causal, else (1, out)."""
        new_states = []
        for layer, state in zip(self.layers, states, strict=True):
            x, state = layer.run(x, state)
            new_states.append(state)
        return x, new_states


def expected_weight_names(layers: Sequence[LayerSpec]) -> list[str]:
    """The array names a bundle must hold for this layer list, in a stable order."""
    lstm = ("kernel", "recurrent_kernel", "bias")
    attention = (
        "query.kernel", "query.bias", "key.kernel", "key.bias", "value.kernel", "value.bias",
        "output.kernel", "output.bias", "norm.gamma", "norm.beta",
    )  # fmt: skip
    names: list[str] = []
    for i, spec in enumerate(layers):
        kind = spec.get("kind")
        if kind == "dense":
            names += [f"{i}.kernel", f"{i}.bias"]
        elif kind == "lstm":
            names += [f"{i}.{w}" for w in lstm]
        elif kind == "bilstm":
            names += [f"{i}.{d}.{w}" for d in ("forward", "backward") for w in lstm]
        elif kind == "attention":
            names += [f"{i}.{w}" for w in attention]
        else:
            raise ValueError(f"layer {i}: unknown kind {kind!r}")
    return names
