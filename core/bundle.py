"""The model artifact format: one zip holding `manifest.json` and the weights as `weights.npz`.

The manifest says everything a reader needs (schema versions, architecture, quantile levels,
training config, metrics, data snapshot); `load` refuses anything it cannot fully trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ModelUnavailable
from core.features import (
    N_TARGETS,
    SUPPORTED_FEATURE_SCHEMAS,
    n_inputs,
)
from core.network import Network

# Bump when the layout of the zip or the meaning of a manifest field changes.
BUNDLE_SCHEMA_VERSION = 1
# The model shipped in the package, so a fresh service answers with the oracle policy.
DEFAULT_PATH = Path(__file__).resolve().parent / "models" / "default.bundle"
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.npz"
# A model far above this is not one of ours (the largest shipped is ~0.5 MB); refusing early
# keeps a corrupt registry row from exhausting a serving process's memory.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    manifest: dict[str, Any]
    weights: dict[str, np.ndarray]

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.manifest["architecture"])

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        return tuple(float(q) for q in self.manifest["quantile_levels"])


def dump(
    manifest: Mapping[str, Any], weights: Mapping[str, np.ndarray]
) -> tuple[bytes, dict[str, Any]]:
    """The artifact bytes and the manifest as stored (with the schema versions and checksum).

    Weights are stored as float32, the precision Keras trained them in.
    """
    buffer = io.BytesIO()
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    np.savez(buffer, allow_pickle=False, **arrays)
    packed = buffer.getvalue()
    stored = dict(manifest)
    stored["bundle_schema_version"] = BUNDLE_SCHEMA_VERSION
    # A manifest that does not say reads the history alone, as BundlePredictor assumes.
    stored["feature_schema_version"] = manifest.get("feature_schema_version", 1)
    stored["weights_sha256"] = hashlib.sha256(packed).hexdigest()
    _check_manifest(stored)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # allow_nan=False: Postgres refuses NaN/Infinity in JSON, so a manifest holding one
        # would publish on SQLite and fail on Postgres; it fails here, on both, instead.
        archive.writestr(
            MANIFEST_NAME, json.dumps(stored, indent=1, sort_keys=True, allow_nan=False)
        )
        archive.writestr(WEIGHTS_NAME, packed)
    artifact = out.getvalue()
    load(artifact)  # never write what we could not read back
    return artifact, stored


def load(artifact: bytes) -> Bundle:
    """Read and validate an artifact; any defect raises ModelUnavailable, never a foreign error."""
    if len(artifact) > MAX_ARTIFACT_BYTES:
        raise ModelUnavailable(f"artifact of {len(artifact)} bytes exceeds the limit")
    try:
        with zipfile.ZipFile(io.BytesIO(artifact)) as archive:
            names = set(archive.namelist())
            if names != {MANIFEST_NAME, WEIGHTS_NAME}:
                raise ModelUnavailable(f"artifact holds {sorted(names)}, not a model bundle")
            manifest = json.loads(archive.read(MANIFEST_NAME))
            packed = archive.read(WEIGHTS_NAME)
    except ModelUnavailable:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, KeyError) as e:
        raise ModelUnavailable(f"artifact is not a readable bundle: {e}") from e
    if not isinstance(manifest, dict):
        raise ModelUnavailable("the manifest is not a JSON object")
    try:
        _check_manifest(manifest)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelUnavailable(f"bad manifest: {e}") from e
    if hashlib.sha256(packed).hexdigest() != manifest["weights_sha256"]:
        raise ModelUnavailable("the weights do not match the manifest's checksum")
    try:
        with np.load(io.BytesIO(packed), allow_pickle=False) as arrays:
            weights = {name: np.array(arrays[name]) for name in arrays.files}
        architecture = manifest["architecture"]
        Network(architecture["layers"], int(architecture["n_inputs"]), weights)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ModelUnavailable(f"the weights do not fit the architecture: {e}") from e
    return Bundle(manifest, weights)


def check_compatible(manifest: Mapping[str, Any]) -> None:
    """Raise ModelUnavailable unless this code can serve a bundle with that manifest."""
    version = manifest.get("bundle_schema_version")
    if version != BUNDLE_SCHEMA_VERSION:
        raise ModelUnavailable(
            f"bundle_schema_version is {version!r}; this code reads {BUNDLE_SCHEMA_VERSION}"
        )
    features = manifest.get("feature_schema_version")
    if features not in SUPPORTED_FEATURE_SCHEMAS or isinstance(features, bool):
        raise ModelUnavailable(
            f"feature_schema_version is {features!r}; this code reads "
            f"{', '.join(map(str, SUPPORTED_FEATURE_SCHEMAS))}"
        )


def _check_manifest(manifest: Mapping[str, Any]) -> None:
    check_compatible(manifest)
    architecture = manifest["architecture"]
    width = n_inputs(int(manifest["feature_schema_version"]))
    if int(architecture["n_inputs"]) != width:
        raise ValueError(f"the model takes {architecture['n_inputs']} features, not {width}")
    levels = [float(q) for q in manifest["quantile_levels"]]
    if levels != sorted(set(levels)) or not all(0 < q < 1 for q in levels) or 0.5 not in levels:
        raise ValueError(f"quantile levels {levels} must be increasing in (0, 1) and hold 0.5")
    outputs = int(architecture["layers"][-1]["units"])
    if outputs != N_TARGETS * len(levels):
        raise ValueError(f"{outputs} outputs do not fit {N_TARGETS} targets x {len(levels)}")
    scale = float(manifest["interval_scale"])
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"interval_scale {scale} must be a positive number")
    if not isinstance(manifest["weights_sha256"], str):
        raise ValueError("weights_sha256 must be a string")
