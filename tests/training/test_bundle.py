"""The artifact format: a round trip keeps every array; any defect is ModelUnavailable."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from core import bundle
from core.errors import ModelUnavailable
from core.features import FEATURE_SCHEMA_VERSION
from service.serving.loader import load_predictor
from tests.training.conftest import random_bundle

HISTORY = np.array([[0.05, 1.2, 0.30, 0.20], [0.10, 1.0, 0.25, 0.18], [0.20, 0.9, 0.22, 0.15]])


def _rezip(artifact: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    files = {}
    with zipfile.ZipFile(io.BytesIO(artifact)) as z:
        for name in z.namelist():
            files[name] = z.read(name)
    edit(files)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def _edit_manifest(**changes):  # type: ignore[no-untyped-def]
    def edit(files: dict[str, bytes]) -> None:
        manifest = json.loads(files[bundle.MANIFEST_NAME])
        manifest.update(changes)
        files[bundle.MANIFEST_NAME] = json.dumps(manifest).encode()

    return edit


@pytest.mark.parametrize("name", ["lite", "standard", "bidirectional", "attention"])
def test_bundle_round_trip_keeps_weights_and_manifest(name: str) -> None:
    artifact = random_bundle(name)
    loaded = bundle.load(artifact)
    assert loaded.manifest["feature_schema_version"] == FEATURE_SCHEMA_VERSION
    assert loaded.architecture["name"] == name
    again, _ = bundle.dump(loaded.manifest, loaded.weights)
    reloaded = bundle.load(again)
    assert set(reloaded.weights) == set(loaded.weights)
    for key, value in loaded.weights.items():
        np.testing.assert_array_equal(reloaded.weights[key], value)


def test_loader_serves_a_valid_bundle() -> None:
    artifact = random_bundle()
    manifest = bundle.load(artifact).manifest
    predictor = load_predictor("v1", manifest, artifact)
    prediction = predictor.predict(HISTORY, (1.0, 1.0, 0.5))
    assert predictor.version == prediction.model_version == "v1"
    assert np.isfinite(prediction.score)
    lo, hi = prediction.interval(0.8)
    assert lo <= prediction.score <= hi


CORRUPTIONS = {
    "empty": lambda a: b"",
    "not a zip": lambda a: b"hello" * 100,
    "truncated": lambda a: a[: len(a) // 2],
    "flipped byte": lambda a: a[:200] + bytes([a[200] ^ 0xFF]) + a[201:],
    "extra file": lambda a: _rezip(a, lambda f: f.update({"evil.pkl": b"x"})),
    "no weights": lambda a: _rezip(a, lambda f: f.pop(bundle.WEIGHTS_NAME)),
    "manifest not json": lambda a: _rezip(a, lambda f: f.update({bundle.MANIFEST_NAME: b"{"})),
    "manifest a list": lambda a: _rezip(a, lambda f: f.update({bundle.MANIFEST_NAME: b"[]"})),
    "old feature schema": lambda a: _rezip(a, _edit_manifest(feature_schema_version=0)),
    "future bundle schema": lambda a: _rezip(a, _edit_manifest(bundle_schema_version=99)),
    "checksum": lambda a: _rezip(a, _edit_manifest(weights_sha256="0" * 64)),
    "bad levels": lambda a: _rezip(a, _edit_manifest(quantile_levels=[0.9, 0.1])),
    "bad scale": lambda a: _rezip(a, _edit_manifest(interval_scale=-1)),
    "other architecture": lambda a: _rezip(
        a, _edit_manifest(architecture=bundle.load(random_bundle("standard")).architecture)
    ),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_artifact_is_model_unavailable(corruption: str) -> None:
    artifact = CORRUPTIONS[corruption](random_bundle())
    with pytest.raises(ModelUnavailable):
        bundle.load(artifact)
    with pytest.raises(ModelUnavailable):
        load_predictor("v1", bundle.load(random_bundle()).manifest, artifact)


def test_a_weight_of_the_wrong_shape_is_refused() -> None:
    loaded = bundle.load(random_bundle())
    weights = dict(loaded.weights)
    weights["0.kernel"] = weights["0.kernel"][:, :-1]
    with pytest.raises(ModelUnavailable):
        bundle.dump(loaded.manifest, weights)


def test_a_registry_manifest_that_disagrees_is_refused() -> None:
    artifact = random_bundle()
    manifest = dict(bundle.load(artifact).manifest)
    manifest["quantile_levels"] = [0.25, 0.5, 0.75]
    with pytest.raises(ModelUnavailable):
        load_predictor("v1", manifest, artifact)


def test_bundle_refuses_a_manifest_with_non_finite_numbers() -> None:
    loaded = bundle.load(random_bundle())
    manifest = {**loaded.manifest, "metrics": {"regret": float("inf")}}
    with pytest.raises(ValueError, match=r"JSON compliant|Out of range"):
        bundle.dump(manifest, loaded.weights)
