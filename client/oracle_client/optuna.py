"""Optuna integration: `OraclePruner`, a pruner that asks the Oracle at each reported step, and
`report_som`, which reports a SOM checkpoint's three metrics so that the pruner can send them.

Needs the `optuna` extra (`pip install './client[optuna]'`); the SDK's core never imports it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from oracle_client.errors import Conflict
from oracle_client.models import Decision
from oracle_client.oracle import Oracle
from oracle_client.run import Metric, Run

log = logging.getLogger("oracle_client")

# The trial's user attributes this module reads and writes.
CHECKPOINT_ATTR = "oracle_checkpoint"  # the last step's metrics, written by report_som
DECISION_ATTR = "oracle_decision"  # the Oracle's answer to it, written by the pruner
MAX_EPOCHS_ATTR = "oracle_max_epochs"  # a trial's own max_epochs, over the pruner's default

# The Oracle's default study weights: mqe + topographic_error + 0.5 * dead_neuron_ratio.
DEFAULT_WEIGHTS = (1.0, 1.0, 0.5)

__all__ = [
    "CHECKPOINT_ATTR",
    "DECISION_ATTR",
    "MAX_EPOCHS_ATTR",
    "OraclePruner",
    "report_som",
    "som_score",
]


def som_score(
    mqe: Metric,
    topographic_error: Metric,
    dead_neuron_ratio: Metric,
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
) -> float:
    """The Oracle's study score of one checkpoint (lower is better); +inf for a diverged map."""
    values = [_finite_or_none(v) for v in (mqe, topographic_error, dead_neuron_ratio)]
    score = 0.0
    for weight, value in zip(weights, values, strict=True):
        if value is None:
            return math.inf
        score += weight * value
    return score if math.isfinite(score) else math.inf


def report_som(
    trial: optuna.Trial,
    step: int,
    mqe: Metric,
    topographic_error: Metric,
    dead_neuron_ratio: Metric,
    *,
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
) -> float:
    """Report one SOM checkpoint: `trial.report(score, step)`, with the three metrics kept in
    the trial's user attributes for `OraclePruner`. Returns the score.

    `step` is the epoch. The score is the Oracle's study score with `weights` (pass the
    study policy's weights if it sets others), so every Optuna pruner sees the same number.
    """
    checkpoint = {
        "epoch": int(step),
        "mqe": _finite_or_none(mqe),
        "topographic_error": _finite_or_none(topographic_error),
        "dead_neuron_ratio": _finite_or_none(dead_neuron_ratio),
    }
    # Before report: a pruner reading the step then always finds its metrics.
    trial.set_user_attr(CHECKPOINT_ATTR, checkpoint)
    score = som_score(mqe, topographic_error, dead_neuron_ratio, weights)
    trial.report(score, int(step))
    return score


class OraclePruner(BasePruner):
    """Prunes a trial when the Oracle answers `stop` to its latest step.

    Each trial is a run of the Oracle, id `optuna-{study_name}-{trial.number}` (stable across
    processes and retries, since the study's storage numbers the trials), in the Oracle study
    `study_id` (default: the Optuna study's name), with the trial's params as its config. Report
    steps with `report_som`; `trial.should_prune()` sends the step and answers from the
    Decision, which it also stores in the trial's user attribute `oracle_decision`.

    The run is finished on the Oracle when the pruner says stop (`stopped`) and when the
    step `max_epochs` is reached (`completed`: the study's reference data). Pass the pruner as
    a callback too, `study.optimize(objective, callbacks=[pruner])`, to finish the other
    trials (failed, or ended by the objective itself); `finish(study, frozen_trial)` is the
    same for the ask-and-tell interface.

    Fails open like the SDK: when the Oracle cannot be reached the trial is not pruned.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        max_epochs: int | None = None,
        study_id: str | None = None,
        dataset: str | None = None,
        timeout: float = 5.0,
        retries: int = 5,
        budget: float = 10.0,
        fail_open: bool = True,
    ) -> None:
        url = url or os.environ.get("ORACLE_URL")
        if not url:
            raise ValueError("no Oracle URL: pass url=... or set ORACLE_URL")
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, not {max_epochs}")
        self.url = url
        self.max_epochs = max_epochs
        self.study_id = study_id
        self.dataset = dataset
        self._oracle_args: dict[str, Any] = {
            "token": token,
            "timeout": timeout,
            "retries": retries,
            "budget": budget,
            "fail_open": fail_open,
        }
        self._init_process_state()

    def _init_process_state(self) -> None:
        # An HTTP connection pool must not cross a fork: each process makes its own.
        self._pid = os.getpid()
        self._oracle: Oracle | None = None
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()  # study.optimize(n_jobs=...) shares the pruner

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pid", "_oracle", "_runs", "_lock"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def __repr__(self) -> str:
        return f"OraclePruner({self.url!r}, max_epochs={self.max_epochs})"

    # --- what Optuna calls ------------------------------------------------------------------

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        checkpoint = trial.user_attrs.get(CHECKPOINT_ATTR)
        if not isinstance(checkpoint, Mapping) or checkpoint.get("epoch") != step:
            raise ValueError(
                f"trial {trial.number} reported step {step} without its SOM metrics: report "
                "with oracle_client.optuna.report_som(trial, step, mqe, te, dead)"
            )
        run = self._run(study, trial)
        if run.status is not None:  # already finished: the answer stays what it was
            return run.status == "stopped"
        if run.last_epoch == step and run.last_decision is not None:
            decision = run.last_decision  # should_prune() called twice for one step
        else:
            decision = run.report(
                step,
                checkpoint.get("mqe"),
                checkpoint.get("topographic_error"),
                checkpoint.get("dead_neuron_ratio"),
            )
            study._storage.set_trial_user_attr(trial._trial_id, DECISION_ATTR, _attr(decision))
        if step >= run.max_epochs:
            run.finish("completed")
            return False
        if decision.should_stop:
            run.finish("stopped")
            return True
        return False

    def __call__(self, study: optuna.study.Study, trial: FrozenTrial) -> None:
        """`study.optimize(..., callbacks=[pruner])`: finish the trial's run."""
        self.finish(study, trial)

    def finish(self, study: optuna.study.Study, trial: FrozenTrial) -> None:
        """Finish the run of a trial that has ended: `stopped` if pruned, `failed` if it
        failed, and if it completed, `completed` when it reached `max_epochs`, else
        `stopped`. A step the pruner was not asked about is sent first."""
        run_id = self.run_id(study, trial)
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None or run.status is not None:
            return  # never reported here, or finished by prune() already
        checkpoint = trial.user_attrs.get(CHECKPOINT_ATTR)
        if (
            trial.state != TrialState.FAIL
            and isinstance(checkpoint, Mapping)
            and (run.last_epoch is None or checkpoint["epoch"] > run.last_epoch)
            and checkpoint["epoch"] <= run.max_epochs
        ):
            run.report(
                checkpoint["epoch"],
                checkpoint.get("mqe"),
                checkpoint.get("topographic_error"),
                checkpoint.get("dead_neuron_ratio"),
            )
        if trial.state == TrialState.FAIL:
            run.finish("failed")
        elif trial.state == TrialState.PRUNED:
            run.finish("stopped")
        else:
            run.finish(run.natural_status())

    # --- runs -------------------------------------------------------------------------------

    def run_id(self, study: optuna.study.Study, trial: FrozenTrial) -> str:
        return f"optuna-{study.study_name}-{trial.number}"

    def oracle(self) -> Oracle:
        """This process's connection to the Oracle."""
        with self._lock:
            if self._pid != os.getpid():
                self._init_process_state()
            if self._oracle is None:
                self._oracle = Oracle(self.url, **self._oracle_args)
            return self._oracle

    def _run(self, study: optuna.study.Study, trial: FrozenTrial) -> Run:
        run_id = self.run_id(study, trial)
        oracle = self.oracle()
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            return run
        max_epochs = trial.user_attrs.get(MAX_EPOCHS_ATTR, self.max_epochs)
        if max_epochs is None:
            raise ValueError(
                "the Oracle needs each run's max_epochs: pass OraclePruner(max_epochs=...) or "
                f"trial.set_user_attr({MAX_EPOCHS_ATTR!r}, n)"
            )
        study_id = self.study_id or study.study_name
        try:
            run = oracle.start_run(
                study_id, int(max_epochs), config=trial.params, dataset=self.dataset, run_id=run_id
            )
        except Conflict as e:
            hint = (
                f"{e.detail} (an earlier Optuna study named {study.study_name!r} used run id "
                f"{run_id} on this Oracle: give this study another name)"
            )
            raise Conflict(e.method, e.url, e.status_code, hint) from e
        with self._lock:
            return self._runs.setdefault(run_id, run)


def _attr(decision: Decision) -> dict[str, Any]:
    """The Decision as a user attribute: JSON, and what a person looking at the trial needs."""
    return {
        "epoch": decision.epoch,
        "action": decision.action,
        "policy": decision.policy,
        "reason": decision.reason,
        "predicted_score": decision.predicted_score,
        "threshold": decision.threshold,
    }


def _finite_or_none(value: Metric) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
