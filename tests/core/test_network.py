"""The NumPy network's stacked-LSTM wavefront: the same outputs and states as layer by layer."""

from __future__ import annotations

import numpy as np
import pytest

from core.network import LSTM, WAVEFRONT_UNITS, Network, State, Wavefront

N_INPUTS = 6


def _stack(units: list[int], seed: int) -> tuple[list[dict[str, object]], dict[str, np.ndarray]]:
    """A layer list of LSTMs (and a dense head) with random weights large enough that every
    gate saturates somewhere."""
    rng = np.random.default_rng(seed)
    layers: list[dict[str, object]] = []
    weights: dict[str, np.ndarray] = {}
    width = N_INPUTS
    for i, u in enumerate(units):
        layers.append({"kind": "lstm", "units": u})
        weights[f"{i}.kernel"] = rng.normal(0, 0.7, (width, 4 * u))
        weights[f"{i}.recurrent_kernel"] = rng.normal(0, 0.7, (u, 4 * u))
        weights[f"{i}.bias"] = rng.normal(0, 0.7, 4 * u)
        width = u
    layers.append({"kind": "dense", "units": 3, "activation": "linear"})
    weights[f"{len(units)}.kernel"] = rng.normal(0, width**-0.5, (width, 3))  # Glorot-sized
    weights[f"{len(units)}.bias"] = rng.normal(0, 1, 3)
    return layers, weights


def _layer_by_layer(
    network: Network, x: np.ndarray, states: list[State]
) -> tuple[np.ndarray, list[State]]:
    out, new = np.asarray(x, np.float32), []
    for layer, state in zip(network.layers, states, strict=True):
        out, state = layer.run(out, state)
        new.append(state)
    return out, new


def _random_states(network: Network, rng: np.random.Generator) -> list[State]:
    """States as a run's earlier checkpoints would have left them (not zeros)."""
    states: list[State] = []
    for layer in network.layers:
        if isinstance(layer, LSTM):
            h = np.tanh(rng.normal(0, 1, layer.units)).astype(np.float32)
            states.append((h, rng.normal(0, 2, layer.units).astype(np.float32)))
        else:
            states.append(layer.start())
    return states


@pytest.mark.parametrize("units", [[64, 32], [16, 24, 8], [32, 32, 32, 32], [128, 64, 32]])
@pytest.mark.parametrize("n_steps", [1, 2, 3, 5, 16, 24])
def test_a_wavefront_equals_its_layers_one_after_another(units: list[int], n_steps: int) -> None:
    layers, weights = _stack(units, seed=len(units) * 100 + n_steps)
    network = Network(layers, N_INPUTS, weights)
    assert network.wavefronts, "every stack here has a group to run as a wavefront"
    rng = np.random.default_rng(n_steps)
    for start in (network.start(), _random_states(network, rng)):
        x = rng.normal(0, 1.5, (n_steps, N_INPUTS))
        expected, expected_states = _layer_by_layer(network, x, start)
        out, states = network.run(x, start)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
        assert len(states) == len(expected_states)
        for got, want in zip(states, expected_states, strict=True):
            if want is None:
                assert got is None
                continue
            for a, b in zip(got, want, strict=True):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_states_a_wavefront_leaves_carry_on_like_one_pass() -> None:
    """A run predicted chunk by chunk (its history so far, then each new checkpoint) gets the
    outputs of one pass over its whole history."""
    layers, weights = _stack([64, 32], seed=1)
    network = Network(layers, N_INPUTS, weights)
    x = np.random.default_rng(2).normal(0, 1, (20, N_INPUTS))
    whole, _ = network.run(x, network.start())
    states, outputs = network.start(), []
    for chunk in (x[:7], x[7:8], x[8:12], x[12:13], x[13:]):
        out, states = network.run(chunk, states)
        outputs.append(out)
    np.testing.assert_allclose(np.concatenate(outputs), whole, rtol=0, atol=1e-5)


def test_layers_are_grouped_up_to_the_unit_budget() -> None:
    def groups(units: list[int]) -> dict[int, list[int]]:
        layers, weights = _stack(units, seed=0)
        found = Network(layers, N_INPUTS, weights).wavefronts
        return {i: [layer.units for layer in w.layers] for i, w in found.items()}

    assert WAVEFRONT_UNITS == 128
    assert groups([64, 32]) == {0: [64, 32]}  # lite
    assert groups([128, 64, 32]) == {1: [64, 32]}  # standard: 128 alone, the rest together
    assert groups([32, 32, 32, 32, 32]) == {0: [32, 32, 32, 32]}  # the fifth would pass 128
    assert groups([200]) == {}
    assert groups([100, 100]) == {}  # 200 units: one dense kernel would cost more than two


def test_a_wavefront_is_built_only_from_lstms() -> None:
    layers, weights = _stack([16, 8], seed=3)
    network = Network(layers, N_INPUTS, weights)
    wavefront = network.wavefronts[0]
    assert isinstance(wavefront, Wavefront)
    assert wavefront.recurrent.shape == (24, 4 * 24)
    # the input reaches the first layer's gates only
    assert np.count_nonzero(wavefront.kernel) == np.count_nonzero(network.layers[0].kernel)  # type: ignore[attr-defined]
