"""One SOM training as the Oracle sees it: register, report checkpoints, finish; fail-open.

A run keeps what the service has not acknowledged yet (its registration, checkpoints that were
answered fail-open) and sends it first at the next call that gets through, so an outage costs
the stored history nothing and the worker nothing but the wait.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

from oracle_client.errors import Conflict, OracleError, OracleUnavailable
from oracle_client.models import Decision, SomMetrics
from oracle_client.transport import Transport

log = logging.getLogger("oracle_client")

Status = Literal["completed", "stopped", "failed"]
Metric = float | None
Final = SomMetrics | Mapping[str, Metric] | None


class Run:
    def __init__(
        self,
        transport: Transport,
        *,
        run_id: str,
        study_id: str,
        max_epochs: int,
        config: Mapping[str, Any] | None,
        dataset: str | None,
        fail_open: bool,
    ) -> None:
        self.run_id = run_id
        self.study_id = study_id
        self.max_epochs = max_epochs
        self.fail_open = fail_open
        self.last_decision: Decision | None = None
        self.last_epoch: int | None = None
        self.status: Status | None = None
        self._transport = transport
        self._path = f"/v1/runs/{run_id}"
        self._spec: dict[str, Any] = {"study_id": study_id, "max_epochs": max_epochs}
        if config is not None:
            self._spec["config"] = dict(config)
        if dataset is not None:
            self._spec["dataset"] = dataset
        self._registered = False
        self._pending: list[dict[str, Any]] = []  # checkpoints answered fail-open, oldest first
        self._started = time.monotonic()

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, study={self.study_id!r}, last_epoch={self.last_epoch})"

    @property
    def registered(self) -> bool:
        """True once the service has stored the run."""
        return self._registered

    @property
    def pending(self) -> int:
        """Checkpoints that were answered fail-open and are still to be sent."""
        return len(self._pending)

    # --- the calls --------------------------------------------------------------------------

    def register(self, deadline: float | None = None) -> None:
        """PUT the run; idempotent, since the id was chosen here. `start_run` calls it."""
        if not self._registered:
            self._transport.request("PUT", self._path, self._spec, deadline=deadline)
            self._registered = True

    def report(
        self,
        epoch: int,
        mqe: Metric,
        topographic_error: Metric,
        dead_neuron_ratio: Metric,
        wall_s: float | None = None,
    ) -> Decision:
        """Send one checkpoint and return the Oracle's Decision.

        Non-finite metrics (a diverged map) are sent as null. `wall_s` defaults to the seconds
        since the run started. If the service cannot be reached within the budget and the
        client fails open, the answer is `continue` with policy `fail-open`, and the checkpoint
        is sent again, before the next one, at the next report or finish.
        """
        self._check_open("report")
        epoch = operator.index(epoch)
        if not 0 <= epoch <= self.max_epochs:
            raise ValueError(f"epoch {epoch} is outside 0..max_epochs ({self.max_epochs})")
        if self.last_epoch is not None and epoch < self.last_epoch:
            raise ValueError(f"epoch {epoch} is below the last reported epoch {self.last_epoch}")
        if wall_s is None:
            wall_s = round(time.monotonic() - self._started, 3)
        checkpoint = {
            "epoch": epoch,
            "mqe": _finite_or_none(mqe, "mqe"),
            "topographic_error": _finite_or_none(topographic_error, "topographic_error"),
            "dead_neuron_ratio": _finite_or_none(dead_neuron_ratio, "dead_neuron_ratio"),
            "wall_s": float(wall_s),
        }
        deadline = self._transport.deadline()
        try:
            self._catch_up(deadline)
            answer = self._transport.request(
                "POST", f"{self._path}/checkpoints", checkpoint, deadline=deadline
            )
            decision = Decision.model_validate(answer)
        except OracleUnavailable as e:
            if not self.fail_open:
                raise
            if not self._pending or self._pending[-1] != checkpoint:
                self._pending.append(checkpoint)
            decision = Decision.fail_open(self.run_id, epoch, str(e))
            log.warning("oracle: run %s epoch %d: %s", self.run_id, epoch, decision.reason)
        self.last_epoch = epoch
        self.last_decision = decision
        return decision

    def finish(self, status: Status, final: Final = None) -> None:
        """End the run on the service; `final` defaults there to the last checkpoint.

        Fails open like `report`: if the service cannot be reached, the run is finished here
        and a warning is logged (with `fail_open=False`, OracleUnavailable is raised).
        """
        if self.status is not None:
            if status != self.status:
                raise OracleError(f"run {self.run_id} already finished as {self.status}")
            return
        body: dict[str, Any] = {"status": status}
        if final is not None:
            values = final._asdict() if isinstance(final, SomMetrics) else dict(final)
            body["final"] = {name: _finite_or_none(v, name) for name, v in values.items()}
        deadline = self._transport.deadline()
        try:
            self._catch_up(deadline)
            self._finish_once(body, deadline)
        except OracleUnavailable as e:
            if not self.fail_open:
                raise
            log.warning(
                "oracle: run %s not finished as %s on the service: %s", self.run_id, status, e
            )
        self.status = status

    # --- the context-manager shape ----------------------------------------------------------

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.status is not None:
            return
        if exc_type is not None:
            try:
                self.finish("failed")
            except OracleError:
                # The training's own exception is the one the worker must see.
                log.exception("oracle: run %s could not be finished as failed", self.run_id)
            return
        self.finish(self.natural_status())

    def natural_status(self) -> Status:
        """How a run that ended without an exception finished: `completed` if it reported its
        last epoch, else `stopped` (on the Oracle's word or on the worker's own)."""
        return "completed" if self.last_epoch == self.max_epochs else "stopped"

    # --- internals --------------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self.status is not None:
            raise OracleError(f"cannot {what}: run {self.run_id} already finished as {self.status}")

    def _catch_up(self, deadline: float) -> None:
        """Send what an outage held back, in order: the run itself, then its checkpoints."""
        self.register(deadline)
        while self._pending:
            self._transport.request(
                "POST", f"{self._path}/checkpoints", self._pending[0], deadline=deadline
            )
            self._pending.pop(0)

    def _finish_once(self, body: dict[str, Any], deadline: float) -> None:
        try:
            self._transport.request("POST", f"{self._path}/finish", body, deadline=deadline)
        except Conflict:
            # A retry of a finish whose answer was lost finds the run ended: that is success
            # if it ended the way we asked.
            stored = self._transport.request("GET", self._path, deadline=deadline)
            if stored.get("status") != body["status"]:
                raise


def _finite_or_none(value: Metric, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        # float("0.3") would pass; a string here is a bug in the worker, not a metric.
        raise TypeError(f"{name} must be a number or None, not {type(value).__name__}")
    number = float(value)  # NumPy scalars included
    return number if math.isfinite(number) else None
