"""Register a candidate and move the active alias only if it passes the promotion gate.

The gate replays the same held-out runs, in the same order, through the candidate, the active
version and the median rule; the candidate must beat both, else it is stored as rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session

from core import bundle, registry
from core.errors import ModelUnavailable
from core.forecast import BundlePredictor
from training.config import TrainConfig
from training.pipeline import Candidate, evaluation

log = structlog.get_logger()
TRAINER = "trainer"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str
    candidate_utility: float
    median_utility: float
    active_utility: float | None


def gate(session: Session, candidate: Candidate, config: TrainConfig) -> GateResult:
    mine = candidate.utility
    median = float(candidate.manifest["metrics"]["gate"]["median_utility"])
    active = _active_utility(session, candidate, config)
    if mine <= median:
        reason = f"utility {mine:.4f} does not beat the median rule's {median:.4f}"
        return GateResult(False, reason, mine, median, active)
    if active is not None and mine <= active:
        reason = f"utility {mine:.4f} does not beat the active version's {active:.4f}"
        return GateResult(False, reason, mine, median, active)
    against = "no active version" if active is None else f"the active version's {active:.4f}"
    reason = f"utility {mine:.4f} beats the median rule's {median:.4f} and {against}"
    return GateResult(True, reason, mine, median, active)


def _active_utility(session: Session, candidate: Candidate, config: TrainConfig) -> float | None:
    """The active version replayed on the candidate's test split; None if there is none or
    it cannot be read by this code (then it cannot be compared, nor kept serving)."""
    version = registry.active_version(session)
    if version is None:
        return None
    row = registry.get_version(session, version)
    try:
        predictor = BundlePredictor(version, bundle.load(bytes(row.artifact)))
    except ModelUnavailable as e:
        log.warning("active_model_unreadable", version=version, error=str(e))
        return None
    metrics = evaluation(
        predictor,
        candidate.split,
        candidate.weights,
        candidate.manifest["origin_threshold"],
        config,
    )
    return float(metrics["gate"]["oracle_utility"])


def publish(session: Session, candidate: Candidate, config: TrainConfig) -> GateResult:
    """Add the version; activate it if the gate passes, else store it as rejected."""
    result = gate(session, candidate, config)
    manifest = dict(candidate.manifest)
    manifest["gate"] = {
        "passed": result.passed,
        "reason": result.reason,
        "active_utility": result.active_utility,
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
