"""Stored rows -> public response bodies."""

from __future__ import annotations

from datetime import datetime

from core import store
from core.store import RunState
from core.tables import Checkpoint, Run, Study
from service.schemas import (
    CheckpointPublic,
    Decision,
    Metrics,
    RunCounts,
    RunPublic,
    StudyPublic,
)


def study_public(study: Study, counts: dict[str, int]) -> StudyPublic:
    return StudyPublic.model_validate(
        {
            "study_id": study.study_id,
            "description": study.description,
            "policy": study.policy,
            "runs": RunCounts(**counts),
            "created_at": study.created_at,
            "updated_at": study.updated_at,
        }
    )


def run_public(run: Run, study_id: str) -> RunPublic:
    final = store.Metrics(run.final_mqe, run.final_topographic_error, run.final_dead_neuron_ratio)
    return _run_public(run, study_id, run.n_checkpoints, final, run.finished_at)


def run_public_of_state(
    state: RunState,
    study_id: str,
    final: store.Metrics | None = None,
    finished_at: datetime | None = None,
) -> RunPublic:
    """A run the writer has just started or ended, from its cached state (no read)."""
    return _run_public(state, study_id, len(state.history), final, finished_at)


def _run_public(
    run: Run | RunState,
    study_id: str,
    n_checkpoints: int,
    final: store.Metrics | None,
    finished_at: datetime | None,
) -> RunPublic:
    ended = run.status != "running" and final is not None
    return RunPublic(
        run_id=run.run_id,
        study_id=study_id,
        max_epochs=run.max_epochs,
        config=run.config,
        dataset=run.dataset,
        status=run.status,
        last_epoch=run.last_epoch,
        n_checkpoints=n_checkpoints,
        final=Metrics(**final.as_dict()) if ended and final is not None else None,
        created_at=run.created_at,
        finished_at=finished_at,
    )


def decision_of(run_id: str, row: Checkpoint) -> Decision:
    predicted = (
        Metrics(
            mqe=row.predicted_mqe,
            topographic_error=row.predicted_topographic_error,
            dead_neuron_ratio=row.predicted_dead_neuron_ratio,
        )
        if row.predicted_mqe is not None
        else None
    )
    interval = (
        (row.score_low, row.score_high)
        if row.score_low is not None and row.score_high is not None
        else None
    )
    return Decision(
        run_id=run_id,
        epoch=row.epoch,
        action=row.action,
        reason=row.reason,
        predicted_final=predicted,
        predicted_score=row.predicted_score,
        score_interval=interval,
        threshold=row.threshold,
        policy=row.policy,
        model_version=row.model_version,
    )


def checkpoint_public(run_id: str, row: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(
        epoch=row.epoch,
        progress=row.progress,
        mqe=row.mqe,
        topographic_error=row.topographic_error,
        dead_neuron_ratio=row.dead_neuron_ratio,
        wall_s=row.wall_s,
        received_at=row.received_at,
        decision=decision_of(run_id, row),
    )
