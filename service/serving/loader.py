"""Turns a registry artifact into a serving predictor: the NumPy forward pass, no TensorFlow."""

from __future__ import annotations

from typing import Any

from core import bundle
from core.errors import ModelUnavailable
from core.forecast import BundlePredictor
from core.policy import Predictor


def load_predictor(version: str, manifest: dict[str, Any], artifact: bytes) -> Predictor:
    """Load and validate; raises ModelUnavailable for any artifact this code cannot serve.

    The registry row's manifest must agree with the one inside the artifact on what decides
    how the model is read: a row whose manifest was edited apart from its weights is refused.
    """
    bundle.check_compatible(manifest)
    loaded = bundle.load(artifact)
    for key in ("architecture", "quantile_levels", "weights_sha256"):
        if manifest.get(key) != loaded.manifest.get(key):
            raise ModelUnavailable(f"model {version}: the registry's manifest disagrees on {key}")
    try:
        return BundlePredictor(version, loaded)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelUnavailable(f"model {version}: {e}") from e
