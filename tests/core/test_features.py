"""Properties of the feature schema: causal, scale-free, finite, and targets that round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.features import (
    CONTEXT,
    CONTEXT_CHOICES,
    HASHED_BUCKETS,
    LOG_RATIO_LIMIT,
    N_CONTEXT,
    N_CONTEXT_V2,
    N_FEATURES,
    N_TARGETS,
    current_metrics,
    decode_targets,
    encode_context,
    encode_history,
    encode_last,
    encode_targets,
    n_context,
    n_inputs,
    with_context,
)

finite_mqe = st.floats(1e-3, 1e3)
ratio = st.floats(0.0, 1.0)


@st.composite
def histories(draw: st.DrawFn, allow_nan: bool = False) -> np.ndarray:
    n = draw(st.integers(1, 30))
    progress = np.sort(draw(arrays(np.float64, n, elements=st.floats(0.0, 1.0))))
    mqe = draw(arrays(np.float64, n, elements=finite_mqe))
    te = draw(arrays(np.float64, n, elements=ratio))
    dead = draw(arrays(np.float64, n, elements=ratio))
    history = np.stack([progress, mqe, te, dead], axis=1)
    if allow_nan:
        mask = draw(arrays(np.bool_, (n, 3)))
        history[:, 1:][mask] = np.nan
    return history


@given(histories(allow_nan=True))
def test_features_are_finite_with_the_schema_width(history: np.ndarray) -> None:
    x = encode_history(history)
    assert x.shape == (len(history), N_FEATURES)
    assert np.all(np.isfinite(x))


@given(histories(allow_nan=True))
def test_features_are_causal(history: np.ndarray) -> None:
    full = encode_history(history)
    for k in range(1, len(history) + 1):
        np.testing.assert_array_equal(encode_history(history[:k]), full[:k])


@given(st.lists(histories(allow_nan=True), min_size=1, max_size=8))
@settings(max_examples=200)
def test_a_batch_of_last_rows_equals_each_history_encoded(batch: list[np.ndarray]) -> None:
    """The serving hot path (`encode_last`) answers what the general path does, NaNs too."""
    rows, current = encode_last(batch)
    for history, row, now in zip(batch, rows, current, strict=True):
        np.testing.assert_allclose(row, encode_history(history)[-1], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(now, current_metrics(history), rtol=1e-12, atol=1e-12)


@given(histories(allow_nan=True))
def test_one_last_row_equals_the_history_encoded(history: np.ndarray) -> None:
    """A batch of one takes plain floats instead of NumPy: the same answer all the same."""
    rows, current = encode_last([history])
    np.testing.assert_allclose(rows[0], encode_history(history)[-1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(current[0], current_metrics(history), rtol=1e-12, atol=1e-12)


@given(histories(), st.floats(1e-2, 1e2))
def test_features_ignore_the_scale_of_mqe(history: np.ndarray, scale: float) -> None:
    scaled = history.copy()
    scaled[:, 1] *= scale
    np.testing.assert_allclose(encode_history(scaled), encode_history(history), atol=1e-9)


@given(histories(), finite_mqe, ratio, ratio)
@settings(max_examples=200)
def test_targets_decode_to_the_finals(history: np.ndarray, mqe: float, te: float, dead: float):
    final = np.array([mqe, te, dead])
    encoded = encode_targets(history, final)
    assert encoded.shape == (len(history), N_TARGETS)
    for k in range(len(history)):
        if abs(encoded[k, 0]) >= LOG_RATIO_LIMIT:
            continue  # beyond the clip a run is lost anyway; the value is not recovered
        decoded = decode_targets(encoded[k], current_metrics(history[: k + 1]))
        np.testing.assert_allclose(decoded, final, rtol=1e-9, atol=1e-12)


@given(histories(), st.floats(1e-2, 1e2), finite_mqe, ratio, ratio)
def test_targets_are_scale_free(history, scale, mqe, te, dead) -> None:
    final = np.array([mqe, te, dead])
    scaled = history.copy()
    scaled[:, 1] *= scale
    np.testing.assert_allclose(
        encode_targets(scaled, final * np.array([scale, 1, 1])),
        encode_targets(history, final),
        atol=1e-9,
    )


@given(arrays(np.float64, (3, 9), elements=st.floats(-20, 20)), histories())
def test_decoded_quantiles_keep_their_order_and_range(raw: np.ndarray, history: np.ndarray):
    raw = np.sort(raw, axis=1)
    decoded = decode_targets(raw, current_metrics(history))
    assert np.all(np.diff(decoded, axis=1) >= 0)
    assert np.all(decoded[0] > 0)
    assert np.all((decoded[1:] >= 0) & (decoded[1:] <= 1))


def test_a_diverged_row_keeps_the_last_finite_values() -> None:
    history = np.array([[0.1, 2.0, 0.3, 0.2], [0.2, np.nan, np.nan, np.nan]])
    x = encode_history(history)
    np.testing.assert_array_equal(x[1, 2:5], x[0, 2:5])
    assert x[0, 5] == 1.0 and x[1, 5] == 0.0


def test_a_malformed_history_is_refused() -> None:
    for bad in (np.zeros((0, 4)), np.zeros((3, 3)), np.zeros(4)):
        try:
            encode_history(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted shape {bad.shape}")


# --- the run's context (feature schema 2) ------------------------------------------------------

MINISOM_CONFIG = {
    "x": 14,
    "y": 15,
    "sigma": 1.4615,
    "learning_rate": 0.40138,
    "neighborhood_function": "triangle",
    "topology": "hexagonal",
    "activation_distance": "manhattan",
    "decay_function": "linear_decay_to_zero",
    "sigma_decay_function": "asymptotic_decay",
    "init": "pca",
    "max_epochs": 20,
    "init_seed": 553228733,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from([*MINISOM_CONFIG, "other"]) | st.text(max_size=10), json_values
    ),
    st.integers(1, 100_000),
)
def test_any_config_encodes_to_a_finite_context(config: dict[str, object], max_epochs: int) -> None:
    context = encode_context(config, max_epochs)
    assert context.shape == (N_CONTEXT,)
    assert np.all(np.isfinite(context))
    assert np.all(np.abs(context) <= LOG_RATIO_LIMIT)


positive = st.floats(5e-324, 1.7e308) | st.sampled_from([5e-324, 1e-200, 1e200, 1.7e308])


@given(positive, positive, positive, positive)
def test_extreme_numbers_stay_within_the_limit(x: float, y: float, sigma: float, rate: float):
    context = encode_context({"x": x, "y": y, "sigma": sigma, "learning_rate": rate}, 10)
    assert np.all(np.isfinite(context)) and np.all(np.abs(context) <= LOG_RATIO_LIMIT)


def test_a_minisom_config_sets_its_numbers_and_one_choice_per_parameter() -> None:
    context = dict(zip(CONTEXT, encode_context(MINISOM_CONFIG, 20), strict=True))
    assert context["config_known"] == 1.0
    assert context["log_max_epochs"] == pytest.approx(np.log10(20) / 3)
    assert context["log_map_size"] == pytest.approx(np.log(14 * 15) / 5)
    assert context["sigma_per_side"] == pytest.approx(1.4615 / 15)
    assert context["log_learning_rate"] == pytest.approx(np.log10(0.40138))
    for key, values in CONTEXT_CHOICES.items():
        hot = [v for v in values if context[f"{key}={v}"] == 1.0]
        assert hot == [MINISOM_CONFIG[key]]
    assert sum(context[name] for name in CONTEXT if "=" in name) == len(CONTEXT_CHOICES)


def test_what_is_missing_or_unknown_encodes_as_zeros_in_the_named_columns() -> None:
    unknown = encode_context(None, 50)
    assert unknown[0] == pytest.approx(np.log10(50) / 3)  # the run's length is always known
    assert not unknown[1:].any()
    named = slice(1, N_CONTEXT_V2)
    assert not encode_context({"x": "14", "y": 15, "sigma": 1, "learning_rate": 0.1}, 50)[
        named
    ].any()
    assert not encode_context({"x": True, "y": 15, "sigma": 1, "learning_rate": 0.1}, 50)[
        named
    ].any()
    assert not encode_context({"x": -1, "y": 15, "sigma": 1, "learning_rate": 0.1}, 50)[named].any()
    odd = encode_context({"topology": "toroidal", "init": "PCA", "decay_function": 3}, 50)
    assert not odd[named].any()
    # JSON integers have no bound: one beyond any float is not a number the model can read.
    huge = {"x": 10**400, "y": 15, "sigma": 1, "learning_rate": 0.1}
    assert not encode_context(huge, 50)[named].any()
    assert not encode_context({"x": 10**400}, 50)[N_CONTEXT_V2:].any()


SUSI_CONFIG = {
    "n_rows": 24,
    "n_columns": 18,
    "init_mode_unsupervised": "pca",
    "train_mode_unsupervised": "online",
    "learning_rate_start": 0.027,
    "nbh_dist_weight_mode": "pseudo-gaussian",
    "random_state": 782785299,
}


def test_any_trainers_config_is_hashed_into_the_schema_3_columns() -> None:
    context = encode_context(SUSI_CONFIG, 100)
    named, hashed = context[1:N_CONTEXT_V2], context[N_CONTEXT_V2:]
    assert not named.any()  # MiniSom's names: none of them
    assert hashed.shape == (HASHED_BUCKETS,) and hashed.any()
    np.testing.assert_array_equal(encode_context(dict(SUSI_CONFIG), 100), context)  # stable
    # a seed says nothing of how a map ends: another one encodes the same
    reseeded = encode_context({**SUSI_CONFIG, "random_state": 1}, 100)
    np.testing.assert_array_equal(reseeded, context)
    # another choice, another number: other columns
    batch = encode_context({**SUSI_CONFIG, "train_mode_unsupervised": "batch"}, 100)
    faster = encode_context({**SUSI_CONFIG, "learning_rate_start": 0.5}, 100)
    assert not np.array_equal(batch, context) and not np.array_equal(faster, context)
    assert n_context(3) == N_CONTEXT and n_context(2) == N_CONTEXT_V2 and n_context(1) == 0


def test_rows_carry_the_context_after_the_history_features() -> None:
    history = np.array([[0.1, 2.0, 0.3, 0.1], [0.2, 1.5, 0.25, 0.1]])
    rows = encode_history(history)
    context = encode_context(MINISOM_CONFIG, 20)
    wide = with_context(rows, context)
    assert wide.shape == (2, n_inputs(3)) and n_inputs(1) == N_FEATURES
    np.testing.assert_array_equal(wide[:, :N_FEATURES], rows)
    np.testing.assert_array_equal(wide[:, N_FEATURES:], np.tile(context, (2, 1)))
    assert not with_context(rows, None)[:, N_FEATURES:].any()
    # a schema 2 model reads the named columns alone
    narrow = with_context(rows, context, n_context(2))
    assert narrow.shape == (2, n_inputs(2))
    np.testing.assert_array_equal(narrow[:, N_FEATURES:], np.tile(context[:N_CONTEXT_V2], (2, 1)))
