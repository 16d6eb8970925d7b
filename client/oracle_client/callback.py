"""The callback shape of a run: one call per checkpoint that says whether to stop, and that
finishes the run itself when the Oracle says stop or the last epoch is reached."""

from __future__ import annotations

from types import TracebackType

from oracle_client.models import Decision
from oracle_client.run import Metric, Run


class TrainingCallback:
    def __init__(self, run: Run) -> None:
        self.run = run

    @property
    def last_decision(self) -> Decision | None:
        return self.run.last_decision

    def __call__(
        self,
        epoch: int,
        mqe: Metric,
        topographic_error: Metric,
        dead_neuron_ratio: Metric,
        wall_s: float | None = None,
    ) -> bool:
        """Report a checkpoint; True means stop training (the run is then finished as
        `stopped`). Reporting epoch `max_epochs` finishes it as `completed`."""
        decision = self.run.report(epoch, mqe, topographic_error, dead_neuron_ratio, wall_s)
        if epoch >= self.run.max_epochs:
            self.run.finish("completed")
            return True
        if decision.should_stop:
            self.run.finish("stopped")
            return True
        return False

    def fail(self) -> None:
        """Finish the run as `failed`: for a training loop that broke."""
        if self.run.status is None:
            self.run.finish("failed")

    def __enter__(self) -> TrainingCallback:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.run.__exit__(exc_type, exc, tb)
