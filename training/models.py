"""The architectures, build only: a JSON layer list (what the bundle stores) -> a Keras model.

The same layer list drives the NumPy forward pass (core.network), and `export_weights`
names the Keras arrays the way it reads them. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from core.features import N_FEATURES
from core.network import LAYER_NORM_EPSILON, expected_weight_names
from training.dataset import MASK_VALUE

if TYPE_CHECKING:
    import keras


def architecture(
    name: str, n_outputs: int, dropout: float, width: float = 1.0, n_inputs: int = N_FEATURES
) -> dict[str, Any]:
    """The layer list of a named architecture, ending in `n_outputs` linear units, reading
    rows of `n_inputs` features (features.n_inputs of the feature schema).

    `width` scales every hidden layer (tests train a narrow copy of the same architecture).
    """

    def n(units: int) -> int:
        return max(2, round(units * width))

    out = {"kind": "dense", "units": n_outputs, "activation": "linear"}
    if name == "standard":  # the seed's: LSTM 128->64->32 with dropout, Dense 32->16->out
        layers = [
            {"kind": "lstm", "units": n(128), "dropout": dropout},
            {"kind": "lstm", "units": n(64), "dropout": dropout},
            {"kind": "lstm", "units": n(32)},
            {"kind": "dense", "units": n(32), "activation": "relu"},
            {"kind": "dense", "units": n(16), "activation": "relu"},
            out,
        ]
    elif name == "bidirectional":  # the seed's: BiLSTM 64->32, Dense 32->out
        layers = [
            {"kind": "bilstm", "units": n(64), "sequences": True, "dropout": dropout},
            {"kind": "bilstm", "units": n(32), "sequences": False},
            {"kind": "dense", "units": n(32), "activation": "relu"},
            out,
        ]
    elif name == "lite":  # the seed's: LSTM 64->32, Dense 16->out
        layers = [
            {"kind": "lstm", "units": n(64), "dropout": dropout},
            {"kind": "lstm", "units": n(32)},
            {"kind": "dense", "units": n(16), "activation": "relu"},
            out,
        ]
    elif name == "attention":  # the seed's next step: an LSTM whose steps attend to the past
        layers = [
            {"kind": "lstm", "units": n(64), "dropout": dropout},
            {"kind": "attention", "heads": 4, "key_dim": n(16)},
            {"kind": "dense", "units": n(32), "activation": "relu"},
            out,
        ]
    else:
        raise ValueError(f"unknown architecture {name!r}")
    causal = all(layer["kind"] != "bilstm" for layer in layers)
    return {"name": name, "n_inputs": n_inputs, "causal": causal, "layers": layers}


def build(spec: dict[str, Any], seed: int) -> keras.Model:
    """A Keras model of the layer list; causal ones emit an output at every step."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(None, int(spec["n_inputs"])), name="history")
    x = keras.layers.Masking(mask_value=MASK_VALUE)(inputs)
    for i, layer in enumerate(spec["layers"]):
        kind, name = layer["kind"], f"layer{i}"
        if kind == "lstm":
            x = keras.layers.LSTM(layer["units"], return_sequences=True, name=name)(x)
        elif kind == "bilstm":
            cell = keras.layers.LSTM(layer["units"], return_sequences=layer["sequences"])
            x = keras.layers.Bidirectional(cell, name=name)(x)
        elif kind == "attention":
            attend = keras.layers.MultiHeadAttention(
                num_heads=layer["heads"], key_dim=layer["key_dim"], name=name
            )
            x = keras.layers.Add()([x, attend(x, x, use_causal_mask=True)])
            x = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=f"{name}_norm")(x)
        elif kind == "dense":
            x = keras.layers.Dense(layer["units"], activation=layer["activation"], name=name)(x)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
        if layer.get("dropout"):
            x = keras.layers.Dropout(layer["dropout"])(x)
    return keras.Model(inputs, x, name=str(spec["name"]))


def export_weights(model: keras.Model, spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """The model's arrays under the names core.network reads."""
    weights: dict[str, np.ndarray] = {}
    lstm = ("kernel", "recurrent_kernel", "bias")
    for i, layer in enumerate(spec["layers"]):
        keras_layer = model.get_layer(f"layer{i}")
        kind = layer["kind"]
        if kind == "dense":
            weights.update(
                zip((f"{i}.kernel", f"{i}.bias"), keras_layer.get_weights(), strict=True)
            )
        elif kind == "lstm":
            weights.update(zip((f"{i}.{w}" for w in lstm), keras_layer.get_weights(), strict=True))
        elif kind == "bilstm":
            for direction in ("forward", "backward"):
                arrays = getattr(keras_layer, f"{direction}_layer").get_weights()
                weights.update(zip((f"{i}.{direction}.{w}" for w in lstm), arrays, strict=True))
        elif kind == "attention":
            for part in ("query", "key", "value", "output"):
                dense = getattr(keras_layer, f"_{part}_dense")
                weights[f"{i}.{part}.kernel"] = dense.kernel.numpy()
                weights[f"{i}.{part}.bias"] = dense.bias.numpy()
            gamma, beta = model.get_layer(f"layer{i}_norm").get_weights()
            weights[f"{i}.norm.gamma"], weights[f"{i}.norm.beta"] = gamma, beta
    missing = set(expected_weight_names(spec["layers"])) - set(weights)
    if missing:
        raise ValueError(f"export missed {sorted(missing)}")
    return {k: np.asarray(v) for k, v in weights.items()}


def import_weights(
    model: keras.Model, spec: dict[str, Any], weights: dict[str, np.ndarray]
) -> None:
    """Set a built model's arrays from `export_weights`' names (a bundle's weights): the
    inverse of export, for a warm start from the active model."""
    lstm = ("kernel", "recurrent_kernel", "bias")
    for i, layer in enumerate(spec["layers"]):
        keras_layer = model.get_layer(f"layer{i}")
        kind = layer["kind"]
        if kind == "dense":
            keras_layer.set_weights([weights[f"{i}.kernel"], weights[f"{i}.bias"]])
        elif kind == "lstm":
            keras_layer.set_weights([weights[f"{i}.{w}"] for w in lstm])
        elif kind == "bilstm":
            for direction in ("forward", "backward"):
                getattr(keras_layer, f"{direction}_layer").set_weights(
                    [weights[f"{i}.{direction}.{w}"] for w in lstm]
                )
        elif kind == "attention":
            for part in ("query", "key", "value", "output"):
                dense = getattr(keras_layer, f"_{part}_dense")
                dense.kernel.assign(weights[f"{i}.{part}.kernel"])
                dense.bias.assign(weights[f"{i}.{part}.bias"])
            model.get_layer(f"layer{i}_norm").set_weights(
                [weights[f"{i}.norm.gamma"], weights[f"{i}.norm.beta"]]
            )
