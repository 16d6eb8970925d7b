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
# Keras trains and predicts in float32; so does this (half the memory traffic of float64 in
# the recurrent matmuls, which dominate; parity with Keras stays within 1e-5).
DTYPE = np.float32
# The widest stack of LSTM layers run as one `Wavefront`: its recurrent kernel is dense over
# all of them, and one vector x matrix product stays near its fixed cost up to ~100 x 400
# (2.3 us) but grows with the square beyond (128 units 3.6 us, 224 units 9.5 us; 2 cores).
WAVEFRONT_UNITS = 128


class Layer(Protocol):
    causal: bool

    def start(self) -> State: ...

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """(T, d_in) -> (T, d_out), continuing from `state`; returns the state after x."""
        ...


def _take(weights: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in weights:
        raise ValueError(f"weight {key!r} is missing")
    array = np.asarray(weights[key], dtype=DTYPE)
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

    def step_many(self, x: np.ndarray, states: list[State]) -> tuple[np.ndarray, list[State]]:
        """One step of B runs: (B, d_in) -> (B, units)."""
        y, _ = self.run(x, None)
        return y, states


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
        half, one, zero = np.full(2 * u, 0.5, DTYPE), np.ones(u, DTYPE), np.zeros(u, DTYPE)
        self.scale = np.concatenate([half, one, half[:u]])
        self.offset = np.concatenate([half, zero, half[:u]])
        self.kernel = kernel * self.scale
        self.recurrent = recurrent * self.scale
        self.bias = bias * self.scale

    def start(self) -> State:
        return np.zeros(self.units, DTYPE), np.zeros(self.units, DTYPE)

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        h, c = state
        z = x @ self.kernel + self.bias
        return _steps(z, h, c, self.recurrent, self.scale, self.offset)

    def step_many(self, x: np.ndarray, states: list[State]) -> tuple[np.ndarray, list[State]]:
        """One step of B runs at once, each from its own state: (B, d_in) -> (B, units)."""
        if len(states) == 1:  # the lone checkpoint of a quiet moment: no copy needed
            h, c = states[0][0][None], states[0][1][None]
        else:
            h = np.stack([state[0] for state in states])
            c = np.stack([state[1] for state in states])
        h, c = _step(x @ self.kernel + self.bias, h, c, self.recurrent, self.scale, self.offset)
        return h, list(zip(h, c, strict=True))


def _steps(
    z: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    recurrent: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
) -> tuple[np.ndarray, State]:
    """The LSTM recurrence over projected inputs z (T, 4u), gates laid out [i, f, c, o]."""
    out = np.empty((z.shape[0], h.shape[0]), DTYPE)
    for t in range(z.shape[0]):
        h, c = _step(z[t], h, c, recurrent, scale, offset)
        out[t] = h
    return out, (h, c)


def _step(
    z: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    recurrent: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step from the projected input z (..., 4u): one run's (u,) state or B runs'
    (B, u) states alike."""
    u = h.shape[-1]
    a = np.tanh(z + h @ recurrent) * scale + offset
    c = a[..., u : 2 * u] * c + a[..., :u] * a[..., 2 * u : 3 * u]
    return a[..., 3 * u :] * np.tanh(c), c


def _interleave(forward: np.ndarray, backward: np.ndarray, u: int) -> np.ndarray:
    """[i f c o] of each direction -> [i_f i_b f_f f_b c_f c_b o_f o_b] along the last axis."""
    return _gates_of([forward, backward], [u, u])


def _gates_of(parts: Sequence[np.ndarray], units: Sequence[int]) -> np.ndarray:
    """The [i f c o] gate columns of several LSTMs (part k has 4 * units[k] columns) laid out
    gate by gate, [i_1 .. i_L f_1 .. f_L c_1 .. c_L o_1 .. o_L], so that `_step` runs them as
    one LSTM of sum(units) units."""
    columns = []
    for gate in range(4):
        columns += [
            part[..., gate * u : (gate + 1) * u] for part, u in zip(parts, units, strict=True)
        ]
    return np.concatenate(columns, axis=-1)


class Wavefront:
    """Consecutive LSTM layers run over a sequence as one recurrence, skewed by a step.

    Iteration s advances layer l to step s - l, from layer l - 1's output at that step, which
    the previous iteration computed: the combined recurrent kernel holds each layer's own
    recurrent kernel on its diagonal block and the next layer's input kernel beside it. L
    layers over T steps take T + L - 1 iterations instead of L * T: more multiply-adds (the
    zero blocks) but a third to a half of the NumPy calls, whose fixed cost dominates at these
    sizes. Used for whole histories; a single step goes layer by layer.
    """

    def __init__(self, layers: Sequence[LSTM]):
        self.layers = list(layers)
        units = [layer.units for layer in layers]
        self.bounds = np.cumsum([0, *units]).tolist()
        total = self.bounds[-1]
        d_in = layers[0].kernel.shape[0]
        zero = [np.zeros((d_in, 4 * layer.units), DTYPE) for layer in layers[1:]]
        self.kernel = _gates_of([layers[0].kernel, *zero], units)  # the input feeds layer 1 only
        self.bias = _gates_of([layer.bias for layer in layers], units)
        self.scale = _gates_of([layer.scale for layer in layers], units)
        self.offset = _gates_of([layer.offset for layer in layers], units)
        rows = []
        for k, layer in enumerate(layers):  # the rows that layer k's output h_k multiplies
            blocks = [np.zeros((layer.units, 4 * other.units), DTYPE) for other in layers]
            blocks[k] = layer.recurrent
            if k + 1 < len(layers):
                blocks[k + 1] = layers[k + 1].kernel
            rows.append(_gates_of(blocks, units))
        self.recurrent = np.concatenate(rows)
        assert self.recurrent.shape == (total, 4 * total)

    def run(self, x: np.ndarray, states: Sequence[State]) -> tuple[np.ndarray, list[State]]:
        """(T, d_in) through every layer from their states: (T, last units), and their states."""
        n_layers, n_steps, bounds = len(self.layers), x.shape[0], self.bounds
        h = np.concatenate([state[0] for state in states])
        c = np.concatenate([state[1] for state in states])
        z = np.empty((n_steps + n_layers - 1, h.shape[0] * 4), DTYPE)
        z[:n_steps] = x @ self.kernel
        z[n_steps:] = 0.0
        z += self.bias
        out = np.empty((n_steps, bounds[-1] - bounds[-2]), DTYPE)
        final: list[State] = []
        for s in range(n_steps + n_layers - 1):
            new_h, new_c = _step(z[s], h, c, self.recurrent, self.scale, self.offset)
            if s < n_layers - 1:  # layers s+1.. have not started: they keep their states
                waiting = bounds[s + 1]
                new_h[waiting:], new_c[waiting:] = h[waiting:], c[waiting:]
            h, c = new_h, new_c
            done = s - n_steps + 1  # the layer that just took its last step, if any
            if done >= 0:  # later iterations overwrite its part of h and c with padding
                part = slice(bounds[done], bounds[done + 1])
                final.append((h[part].copy(), c[part].copy()))
            if s >= n_layers - 1:
                out[s - n_layers + 1] = h[bounds[-2] :]
        return out, final


class BiLSTM:
    """Keras' Bidirectional(LSTM), outputs concatenated [forward, backward]; sees the future,
    so it is not causal: it runs over the whole history at every call."""

    causal = False

    def __init__(self, spec: LayerSpec, d_in: int, weights: Mapping[str, np.ndarray], key: str):
        self.sequences = bool(spec.get("sequences", True))
        forward = LSTM(spec, d_in, weights, f"{key}.forward")
        backward = LSTM(spec, d_in, weights, f"{key}.backward")
        u = forward.units
        self.units = 2 * u
        # Both directions run as one LSTM of 2u units whose recurrent kernel is block-diagonal
        # (each half sees only its own state): step t advances the forward direction at t and
        # the backward one at T-1-t, with half the NumPy calls of two separate loops.
        zeros = np.zeros_like(forward.kernel)
        self.kernel_forward = _interleave(forward.kernel, zeros, u)
        self.kernel_backward = _interleave(zeros, backward.kernel, u)
        self.bias = _interleave(forward.bias, backward.bias, u)
        self.recurrent = np.concatenate(
            [
                _interleave(forward.recurrent, np.zeros_like(forward.recurrent), u),
                _interleave(np.zeros_like(backward.recurrent), backward.recurrent, u),
            ]
        )
        self.scale = _interleave(forward.scale, backward.scale, u)
        self.offset = _interleave(forward.offset, backward.offset, u)

    def start(self) -> State:
        return None

    def run(self, x: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        z = x @ self.kernel_forward + x[::-1] @ self.kernel_backward + self.bias
        zero = np.zeros(self.units, DTYPE)
        out, _ = _steps(z, zero, zero, self.recurrent, self.scale, self.offset)
        u = self.units // 2
        if self.sequences:  # the backward half of step t belongs to position T-1-t
            return np.concatenate([out[:, :u], out[::-1, u:]], axis=1), None
        return out[-1:], None  # [forward after all steps, backward after all steps]


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
        self.wq = self.wq / DTYPE(np.sqrt(k))  # Keras scales the query by 1/sqrt(key_dim)
        self.bq = self.bq / DTYPE(np.sqrt(k))

    def start(self) -> State:
        empty = np.empty((0, self.heads, self.key_dim), DTYPE)
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
        self.wavefronts = _wavefronts(self.layers)

    def start(self) -> list[State]:
        return [layer.start() for layer in self.layers]

    @property
    def batches(self) -> bool:
        """Whether `step_many` can advance many runs at once (recurrent and dense layers)."""
        return self.causal and all(hasattr(layer, "step_many") for layer in self.layers)

    def step_many(
        self, x: np.ndarray, states: Sequence[list[State]]
    ) -> tuple[np.ndarray, list[list[State]]]:
        """One more step for each of B runs, from each run's states: (B, n_inputs) rows ->
        (B, out), and each run's new states. The same as `run` one row at a time, with one
        matmul per layer for all of them."""
        x = np.asarray(x, dtype=DTYPE)
        by_layer: list[list[State]] = []
        for i, layer in enumerate(self.layers):
            x, layer_states = layer.step_many(x, [run_states[i] for run_states in states])  # type: ignore[attr-defined]
            by_layer.append(layer_states)
        return x, [list(run_states) for run_states in zip(*by_layer, strict=True)]

    def run(self, x: np.ndarray, states: list[State]) -> tuple[np.ndarray, list[State]]:
        """(T, n_inputs) -> outputs of the last layer; (T, out) if causal, else (1, out)."""
        new_states: list[State] = []
        x = np.asarray(x, dtype=DTYPE)
        i = 0
        while i < len(self.layers):
            wavefront = self.wavefronts.get(i) if x.shape[0] > 1 else None
            if wavefront is not None:
                n = len(wavefront.layers)
                x, group = wavefront.run(x, states[i : i + n])
                new_states += group
                i += n
            else:
                x, state = self.layers[i].run(x, states[i])
                new_states.append(state)
                i += 1
        return x, new_states


def _wavefronts(layers: Sequence[Layer]) -> dict[int, Wavefront]:
    """Groups of consecutive LSTM layers of at most WAVEFRONT_UNITS units in all, by the index
    of their first layer (greedy from the input side)."""
    found: dict[int, Wavefront] = {}
    i = 0
    while i < len(layers):
        group: list[LSTM] = []
        while i + len(group) < len(layers):
            layer = layers[i + len(group)]
            if not isinstance(layer, LSTM):
                break
            if group and sum(g.units for g in group) + layer.units > WAVEFRONT_UNITS:
                break
            group.append(layer)
        if len(group) >= 2:
            found[i] = Wavefront(group)
        i += max(len(group), 1)
    return found


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
