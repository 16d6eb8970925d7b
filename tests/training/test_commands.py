"""The CLI's plain functions, on a bundle file (no TensorFlow needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.features import FEATURE_SCHEMA_VERSION, n_inputs
from tests.training.conftest import random_bundle
from training import commands
from training.dataset import RunRecord


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.bundle"
    path.write_bytes(random_bundle())
    return path


def _sequence(tmp_path: Path, run: RunRecord, k: int, with_max: bool) -> Path:
    data = {
        "epochs": run.epochs[:k].tolist(),
        "mqe": run.history[:k, 1].tolist(),
        "topographic_error": run.history[:k, 2].tolist(),
        "dead_neuron_ratio": run.history[:k, 3].tolist(),
    }
    if with_max:
        data["max_epochs"] = run.max_epochs
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    return path


def test_predict_gives_finals_and_a_recommendation(
    tmp_path: Path, bundle_file: Path, runs: list[RunRecord]
) -> None:
    run = next(r for r in runs if r.trainable)
    sequence = _sequence(tmp_path, run, 8, with_max=False)
    out = commands.predict(str(sequence), max_epochs=run.max_epochs, model=str(bundle_file))
    assert set(out["predicted_final"]) == {"mqe", "topographic_error", "dead_neuron_ratio"}
    lo, hi = out["score_interval"]
    assert lo <= out["predicted_score"] <= hi and "action" not in out
    # A model without a record of its own calibration never stops a run on its forecast.
    uncalibrated = commands.predict(
        str(sequence), max_epochs=run.max_epochs, model=str(bundle_file), threshold=-1.0
    )
    assert uncalibrated["action"] == "continue" and uncalibrated["policy"] == "warmup"
    assert "not calibrated" in uncalibrated["reason"]
    # One whose manifest holds its held-out calibration, for inputs within its training
    # spread: its own margin applies, and a forecast far above the threshold stops.
    width = n_inputs(FEATURE_SCHEMA_VERSION)
    calibrated = tmp_path / "calibrated.bundle"
    calibrated.write_bytes(
        random_bundle(
            extra={
                "input_stats": {"mean": [0.0] * width, "scale": [1e6] * width, "limit": 1.0},
                "calibration": {"good_scores": [0.0] * 20},
            }
        )
    )
    decided = commands.predict(
        str(sequence), max_epochs=run.max_epochs, model=str(calibrated), threshold=-1e3
    )
    assert decided["action"] == "stop" and decided["policy"] == "oracle", decided
    assert "the model's own held-out" in decided["reason"]


def test_predict_needs_max_epochs(tmp_path: Path, bundle_file: Path, runs: list[RunRecord]):
    sequence = _sequence(tmp_path, runs[0], 4, with_max=False)
    with pytest.raises(InvalidInput):
        commands.predict(str(sequence), model=str(bundle_file))
    with_max = _sequence(tmp_path, runs[0], 4, with_max=True)
    assert commands.predict(str(with_max), model=str(bundle_file))["model_version"] == "model"


def test_evaluate_a_bundle_file_on_a_data_file(
    tmp_path: Path, bundle_file: Path, small_runs: list[RunRecord], data_file: Path
) -> None:
    subset = tmp_path / "subset.jsonl"
    wanted = {r.run_id for r in small_runs[:40]}
    subset.write_text(
        "".join(line for line in data_file.open() if json.loads(line)["run_id"] in wanted)
    )
    out = commands.evaluate(str(bundle_file), str(subset))
    assert out["n_runs"] == 40 and "| oracle |" in out["report"]
    assert set(out["backtest"]) == {"oracle", "never", "median", "asha", "origin"}


def test_importing_commands_does_not_import_tensorflow() -> None:
    code = "import sys, training.commands; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
