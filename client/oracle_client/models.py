"""The wire shapes a worker reads back from the Oracle: a Decision and its predicted metrics.

They mirror the Decision of docs/api.md but ignore fields they do not know, so a newer service
does not break an older worker.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

FAIL_OPEN = "fail-open"


class Metrics(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    mqe: float | None
    topographic_error: float | None
    dead_neuron_ratio: float | None


class Decision(BaseModel):
    """The Oracle's answer to one checkpoint; `policy` says who answered."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str
    epoch: int
    action: Literal["continue", "stop"]
    reason: str
    predicted_final: Metrics | None = None
    predicted_score: float | None = None
    score_interval: tuple[float, float] | None = None
    threshold: float | None = None
    policy: str
    model_version: str | None = None

    @property
    def should_stop(self) -> bool:
        return self.action == "stop"

    @property
    def failed_open(self) -> bool:
        """True when the service was not reached and the client answered `continue` itself."""
        return self.policy == FAIL_OPEN

    @classmethod
    def fail_open(cls, run_id: str, epoch: int, why: str) -> Decision:
        return cls(
            run_id=run_id,
            epoch=epoch,
            action="continue",
            reason=f"the Oracle was not reached ({why}); continuing so no training is lost",
            policy=FAIL_OPEN,
        )


class SomMetrics(NamedTuple):
    """The three checkpoint metrics in `report`'s argument order, so `*metrics` unpacks."""

    mqe: float | None
    topographic_error: float | None
    dead_neuron_ratio: float | None
