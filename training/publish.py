"""Register a candidate and move the active alias only if it passes the promotion gate.

The gate (training.gate) compares, run by run, the candidate's cross-fitted forecasts of the
finished runs with the active model's forecasts of the same runs, and promotes on a paired
test; the evidence is stored in the version's manifest either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.orm import Session

from core import bundle, registry
from core.bundle import Bundle
from core.errors import ModelUnavailable
from core.forecast import BundlePredictor
from training import gate as stats
from training.config import TrainConfig
from training.pipeline import Candidate

log = structlog.get_logger()
TRAINER = "trainer"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    active_version: str | None
    evidence: dict[str, Any] | None  # training.gate.Comparison.as_dict; None: no active model


@dataclass(frozen=True)
class Active:
    version: str
    bundle: Bundle
    after_pk: int  # the newest database run it trained on (0: trained from a file)

    @property
    def predictor(self) -> BundlePredictor:
        return BundlePredictor(self.version, self.bundle)


def active_model(session: Session) -> Active | None:
    """The active version, if there is one this code can read (else it can neither be compared
    with nor kept serving, and a candidate replaces it)."""
    version = registry.active_version(session)
    if version is None:
        return None
    row = registry.get_version(session, version)
    try:
        loaded = bundle.load(bytes(row.artifact))
    except ModelUnavailable as e:
        log.warning("active_model_unreadable", version=version, error=str(e))
        return None
    snapshot = loaded.manifest.get("data_snapshot") or {}
    after = int(snapshot.get("max_run_pk", 0)) if snapshot.get("source") == "database" else 0
    return Active(version, loaded, after)


def gate(candidate: Candidate, active: Active | None, config: TrainConfig) -> GateResult:
    if active is None:
        return GateResult(True, "no active version to compare with", None, None)
    comparison = stats.compare(
        candidate.runs,
        candidate.predictor_for,
        active.predictor,
        candidate.weights,
        config.gate_min_runs,
        after_pk=active.after_pk,
    )
    passed, reason = comparison.verdict(config.gate_alpha)
    return GateResult(passed, reason, active.version, comparison.as_dict())


def publish(
    session: Session, candidate: Candidate, config: TrainConfig, active: Active | None = None
) -> GateResult:
    """Add the version; activate it if the gate passes, else store it as rejected. `active`:
    the active model as read before training (read now when not given)."""
    if active is None:
        active = active_model(session)
    elif registry.active_version(session) != active.version:
        active = active_model(session)  # an operator moved the alias while this one trained
    result = gate(candidate, active, config)
    manifest = dict(candidate.manifest)
    manifest["gate"] = {
        "passed": result.passed,
        "reason": result.reason,
        "against": result.active_version,
        "evidence": result.evidence,
        "alpha": config.gate_alpha,
    }
    registry.add_version(
        session,
        version=candidate.version,
        architecture=str(manifest["architecture"]["name"]),
        manifest=manifest,
        artifact=candidate.artifact,
        status="candidate" if result.passed else "rejected",
        reason=None if result.passed else result.reason,
    )
    if result.passed:
        registry.activate(session, candidate.version, by=TRAINER)
    log.info(
        "model_published", version=candidate.version, passed=result.passed, reason=result.reason
    )
    return result
