"""What a model records of itself for the service: the spread of its training inputs (so that
a run unlike them is known as such) and its calibration on runs it never trained on (the
margin its stops may use before a study has evidence of its own, for inputs like its training
data only: core.calibration.Margins)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.calibration import EvidenceSet
from core.forecast import BundlePredictor
from core.reference import percentile_scores
from core.scoring import StudyPolicy, Weights
from training.dataset import Inputs, RunRecord, step_arrays

# A run whose inputs lie farther from the training rows than this share of them did is out of
# distribution (the limit the service compares with).
OOD_QUANTILE = 0.99
# Columns that never moved in training (a context column no training run used) are read with
# this spread: any value there is then far, as it should be (a setting the model never saw).
MIN_SCALE = 0.05


def input_stats(runs: Sequence[RunRecord], inputs: Inputs, max_steps: int) -> dict[str, Any]:
    """Mean and spread of the training input rows, and the OOD_QUANTILE of their distance."""
    arrays = step_arrays(runs, max_steps, inputs)
    rows = arrays.x[arrays.weight > 0].astype(np.float64)
    if rows.shape[0] == 0:
        return {}
    mean = rows.mean(axis=0)
    scale = np.maximum(rows.std(axis=0), MIN_SCALE)
    z = (rows - mean) / scale
    distance = np.sqrt(np.mean(z * z, axis=1))
    return {
        "mean": mean.round(6).tolist(),
        "scale": scale.round(6).tolist(),
        "limit": float(np.quantile(distance, OOD_QUANTILE)),
        "quantile": OOD_QUANTILE,
    }


def good_scores(
    predictor: BundlePredictor | Callable[[RunRecord], BundlePredictor],
    runs: Sequence[RunRecord],
    weights: dict[str, Weights],
    policy: StudyPolicy | None = None,
) -> list[float]:
    """Each held-out run's worst stop statistic (`predictor` one model, or each run's own that
    never saw it), for the runs that ended at or below their
    group's threshold (the default policy's: the p50 of the group's final scores), sorted."""
    base = policy or StudyPolicy()
    by_group: dict[str, list[RunRecord]] = {}
    for run in runs:
        if run.trainable and run.group in weights:
            by_group.setdefault(run.group, []).append(run)
    out: list[np.ndarray] = []
    for group, members in by_group.items():
        w = weights[group]
        vector = np.array([w.mqe, w.topographic_error, w.dead_neuron_ratio])
        finals = np.array([float(w.scores(r.final[None, :])[0]) for r in members])
        threshold = float(percentile_scores(finals, base.threshold.value))
        evidence = EvidenceSet()
        evidence.add(
            (predictor if isinstance(predictor, BundlePredictor) else predictor(r)).evidence(
                r.history, vector, f, r.context
            )
            for r, f in zip(members, finals, strict=True)
        )
        out.append(evidence.good(threshold, base.min_progress))
    if not out:
        return []
    return [round(float(v), 6) for v in np.sort(np.concatenate(out))]
