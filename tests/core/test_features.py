"""Properties of the feature schema: causal, scale-free, finite, and targets that round-trip."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oracle.core.features import (
    LOG_RATIO_LIMIT,
    N_FEATURES,
    N_TARGETS,
    current_metrics,
    decode_targets,
    encode_history,
    encode_last,
    encode_targets,
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
