"""Shared pieces of the training tests: the real runs, and bundles with random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from core import bundle
from core.features import FEATURE_SCHEMA_VERSION, N_TARGETS, n_inputs
from core.tables import Checkpoint, Run, Study
from training.config import TrainConfig
from training.dataset import RunRecord, load_file
from training.models import architecture

LEVELS = TrainConfig().quantile_levels


@pytest.fixture(scope="session")
def runs(data_file: Path) -> list[RunRecord]:
    return load_file(data_file)


@pytest.fixture(scope="session")
def small_runs(runs: list[RunRecord]) -> list[RunRecord]:
    """120 runs, every data set and the diverged ones included, in a fixed order."""
    return runs[::5]


def random_weights(
    spec: dict[str, Any], seed: int = 0, scale: float = 0.3
) -> dict[str, np.ndarray]:
    """Weights of the right names and shapes for a layer list, drawn at random."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    width = int(spec["n_inputs"])
    for i, layer in enumerate(spec["layers"]):
        kind = layer["kind"]
        if kind == "dense":
            u = layer["units"]
            weights |= {
                f"{i}.kernel": rng.normal(0, scale, (width, u)),
                f"{i}.bias": rng.normal(0, scale, u),
            }
            width = u
        elif kind in ("lstm", "bilstm"):
            u = layer["units"]
            prefixes = [f"{i}"] if kind == "lstm" else [f"{i}.forward", f"{i}.backward"]
            for p in prefixes:
                weights[f"{p}.kernel"] = rng.normal(0, scale, (width, 4 * u))
                weights[f"{p}.recurrent_kernel"] = rng.normal(0, scale, (u, 4 * u))
                weights[f"{p}.bias"] = rng.normal(0, scale, 4 * u)
            width = u * len(prefixes)
        elif kind == "attention":
            h, k = layer["heads"], layer["key_dim"]
            for part in ("query", "key", "value"):
                weights[f"{i}.{part}.kernel"] = rng.normal(0, scale, (width, h, k))
                weights[f"{i}.{part}.bias"] = rng.normal(0, scale, (h, k))
            weights[f"{i}.output.kernel"] = rng.normal(0, scale, (h, k, width))
            weights[f"{i}.output.bias"] = rng.normal(0, scale, width)
            weights[f"{i}.norm.gamma"] = 1 + rng.normal(0, scale, width)
            weights[f"{i}.norm.beta"] = rng.normal(0, scale, width)
    return weights


def random_bundle(
    name: str = "lite",
    width: float = 0.25,
    seed: int = 0,
    schema: int = FEATURE_SCHEMA_VERSION,
    extra: dict[str, Any] | None = None,
) -> bytes:
    spec = architecture(name, N_TARGETS * len(LEVELS), 0.0, width, n_inputs(schema))
    manifest = {
        "architecture": spec,
        "feature_schema_version": schema,
        "quantile_levels": list(LEVELS),
        "interval_scale": 1.0,
        **(extra or {}),
    }
    artifact, _ = bundle.dump(manifest, random_weights(spec, seed))
    return artifact


def store_runs(
    session: Session,
    runs: list[RunRecord],
    status: str,
    policy: str = "warmup",
    study_id: str = "s1",
) -> None:
    """Finished (or other) runs with their checkpoints, as the service would have stored them,
    every checkpoint decided by `policy`."""
    study = session.query(Study).filter_by(study_id=study_id).one_or_none()
    if study is None:
        study = Study(study_id=study_id, policy={})
        session.add(study)
        session.flush()
    seqs = session.query(Run).filter(Run.study_pk == study.pk, Run.reference_seq.is_not(None))
    first = seqs.count() + 1
    for seq, run in enumerate(runs, start=first):
        row = Run(
            run_id=run.run_id,
            study_pk=study.pk,
            max_epochs=run.max_epochs,
            config=run.config,
            status=status,
            final_mqe=None if np.isnan(run.final[0]) else float(run.final[0]),
            final_topographic_error=None if np.isnan(run.final[1]) else float(run.final[1]),
            final_dead_neuron_ratio=None if np.isnan(run.final[2]) else float(run.final[2]),
            reference_seq=seq if status == "completed" else None,
            n_checkpoints=len(run.epochs),
        )
        session.add(row)
        session.flush()
        for epoch, (p, m, t, d) in zip(run.epochs, run.history, strict=True):
            session.add(
                Checkpoint(
                    run_pk=row.pk,
                    epoch=int(epoch),
                    progress=float(p),
                    mqe=None if np.isnan(m) else float(m),
                    topographic_error=None if np.isnan(t) else float(t),
                    dead_neuron_ratio=None if np.isnan(d) else float(d),
                    action="continue",
                    policy=policy,
                    reason="test",
                )
            )
