"""Answering a checkpoint: store it with the decision of the study's policy, exactly once."""

from __future__ import annotations

from typing import Any

import numpy as np

from oracle.core import store
from oracle.core.errors import Conflict, InvalidInput
from oracle.core.policy import Situation, Verdict, chain_for, decide
from oracle.core.reference import history_array
from oracle.core.store import Metrics
from oracle.core.tables import Study, utcnow
from oracle.service import metrics
from oracle.service.api.present import decision_of
from oracle.service.schemas import CheckpointIn, Decision
from oracle.service.state import AppState


class _RaceLost(Exception):
    """Another process stored this run's next epoch first; the caller re-reads once."""


def record_checkpoint(state: AppState, run_id: str, body: CheckpointIn) -> Decision:
    try:
        return _record(state, run_id, body)
    except _RaceLost:
        # The winner's row is committed now: a retry returns it (same values) or a 409.
        return _record(state, run_id, body)


def _record(state: AppState, run_id: str, body: CheckpointIn) -> Decision:
    observed = Metrics.of(body.mqe, body.topographic_error, body.dead_neuron_ratio)
    with state.writing() as session:
        run = store.get_run(session, run_id)
        if body.epoch > run.max_epochs:
            raise InvalidInput(
                f"epoch {body.epoch} is outside 0..{run.max_epochs} (the run's max_epochs)"
            )
        if run.last_epoch is not None and body.epoch <= run.last_epoch:
            stored = store.find_checkpoint(session, run.pk, body.epoch)
            if stored is not None:
                if store.same_metrics(stored, observed, body.wall_s):
                    return decision_of(run_id, stored)  # a safe retry: the stored answer
                raise Conflict(f"epoch {body.epoch} of run {run_id!r} is stored with other values")
        store.ensure_can_record(run, body.epoch)
        study = session.get_one(Study, run.study_pk)
        policy = store.study_policy(study)
        rows = store.history_of(session, run.pk)
        rows.append(
            (body.epoch, observed.mqe, observed.topographic_error, observed.dead_neuron_ratio)
        )
        situation = Situation(
            epoch=body.epoch,
            max_epochs=run.max_epochs,
            history=history_array(rows, run.max_epochs),
            policy=policy,
            thresholds=state.references.get(session, study.pk).thresholds(policy),
            predictor=state.models.current,
        )
        verdict = decide(chain_for(policy.decider), situation)
        try:
            store.insert_checkpoint(session, run, _row(body, observed, run.max_epochs, verdict))
        except Conflict as e:
            raise _RaceLost from e
        decision = _decision(run_id, body.epoch, verdict)
    metrics.CHECKPOINTS.inc()
    metrics.DECISIONS.labels(action=decision.action, policy=decision.policy).inc()
    return decision


def _row(
    body: CheckpointIn, observed: Metrics, max_epochs: int, verdict: Verdict
) -> dict[str, Any]:
    p = verdict.prediction
    lo_hi = p.interval(0.8) if p is not None else (None, None)
    return {
        "epoch": body.epoch,
        "progress": body.epoch / max_epochs,
        **observed.as_dict(),
        "wall_s": body.wall_s,
        "action": verdict.action,
        "policy": verdict.policy,
        "reason": verdict.reason,
        "predicted_mqe": _finite(p.final[0]) if p else None,
        "predicted_topographic_error": _finite(p.final[1]) if p else None,
        "predicted_dead_neuron_ratio": _finite(p.final[2]) if p else None,
        "predicted_score": _finite(p.score) if p else None,
        "score_low": _finite(lo_hi[0]),
        "score_high": _finite(lo_hi[1]),
        "threshold": _finite(verdict.threshold),
        "model_version": p.model_version if p else None,
        "received_at": utcnow(),
    }


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _decision(run_id: str, epoch: int, verdict: Verdict) -> Decision:
    p = verdict.prediction
    return Decision.model_validate(
        {
            "run_id": run_id,
            "epoch": epoch,
            "action": verdict.action,
            "reason": verdict.reason,
            "predicted_final": (
                dict(zip(("mqe", "topographic_error", "dead_neuron_ratio"), p.final, strict=True))
                if p
                else None
            ),
            "predicted_score": _finite(p.score) if p else None,
            "score_interval": p.interval(0.8) if p else None,
            "threshold": _finite(verdict.threshold),
            "policy": verdict.policy,
            "model_version": p.model_version if p else None,
        }
    )
