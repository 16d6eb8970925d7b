"""Deciding a checkpoint and storing it with its decision: the rows, the answers, and the
one-at-a-time path that works from the database's truth (retries, conflicts, lost races)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core import store
from core.calibration import is_exploration
from core.db import Database
from core.errors import Conflict, InvalidInput
from core.features import encode_context
from core.policy import Situation, Verdict, chain_for, decide
from core.reference import history_array
from core.store import Metrics
from core.tables import Study, utcnow
from service.api.present import decision_of
from service.reference_cache import ReferenceCache, study_view
from service.schemas import CheckpointIn, Decision
from service.serving.holder import ModelHolder
from service.storage import storage_errors

TARGETS = ("mqe", "topographic_error", "dead_neuron_ratio")


def record_one(
    db: Database,
    references: ReferenceCache,
    models: ModelHolder,
    run_id: str,
    body: CheckpointIn,
) -> Decision:
    """Answer one checkpoint in its own transaction, from the database's truth: the run's row
    is locked from its read to the commit, so no other writer moves the run on meanwhile."""
    observed = Metrics.of(body.mqe, body.topographic_error, body.dead_neuron_ratio)
    with storage_errors(), db.writes.begin() as session:
        run = store.get_run(session, run_id, for_update=True)
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
        predictor = models.current
        view = study_view(references, session, study.pk, predictor)
        situation = Situation(
            epoch=body.epoch,
            max_epochs=run.max_epochs,
            history=history_array(rows, run.max_epochs),
            policy=policy,
            thresholds=view.thresholds,
            predictor=predictor,
            context=encode_context(run.config, run.max_epochs),
            margins=view.margins,
            exploration=is_exploration(run_id, policy.exploration),
        )
        verdict = decide(chain_for(policy.decider), situation)
        row = row_of_verdict(body, observed, run.max_epochs, verdict)
        store.insert_checkpoint(session, run, row)
        return decision_of_verdict(run_id, row)


def row_of_verdict(
    body: CheckpointIn,
    observed: Metrics,
    max_epochs: int,
    verdict: Verdict,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """The checkpoint row: what was observed and what was answered, stored as one.
    `received_at`: when it arrived (a batch's time, shared by its rows), else now."""
    p = verdict.prediction
    low, high = p.interval(0.8) if p is not None else (None, None)
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
        "score_low": _finite(low),
        "score_high": _finite(high),
        "threshold": _finite(verdict.threshold),
        "model_version": p.model_version if p else None,
        "received_at": received_at or utcnow(),
    }


def decision_of_verdict(run_id: str, row: Mapping[str, Any]) -> Decision:
    """The answer to a checkpoint, from the row about to be stored (the same one a retry reads)."""
    predicted = (
        {name: row[f"predicted_{name}"] for name in TARGETS}
        if row["predicted_mqe"] is not None
        else None
    )
    interval = (
        (row["score_low"], row["score_high"])
        if row["score_low"] is not None and row["score_high"] is not None
        else None
    )
    return Decision.model_validate(
        {
            "run_id": run_id,
            "epoch": row["epoch"],
            "action": row["action"],
            "reason": row["reason"],
            "predicted_final": predicted,
            "predicted_score": row["predicted_score"],
            "score_interval": interval,
            "threshold": row["threshold"],
            "policy": row["policy"],
            "model_version": row["model_version"],
        }
    )


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
