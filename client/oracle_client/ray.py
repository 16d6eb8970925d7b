"""Ray Tune integration: `OracleScheduler`, a trial scheduler that sends each reported result
of a SOM trial to the Oracle as a checkpoint and answers CONTINUE or STOP from the Decision.

Needs the `ray` extra (`pip install './client[ray]'`); the SDK's core never imports it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from oracle_client.models import Decision
from oracle_client.oracle import Oracle
from oracle_client.run import Run

log = logging.getLogger("oracle_client")

METRICS = ("mqe", "topographic_error", "dead_neuron_ratio")

__all__ = ["OracleScheduler"]


class OracleScheduler(FIFOScheduler):
    """Stops a Tune trial when the Oracle answers `stop` to its latest result.

    A scheduler rather than a `Stopper`: Tune gives a scheduler the `Trial` (its config goes
    to the Oracle's model) and tells it when a trial completes or errors (the run is then
    finished on the Oracle as `completed` or `failed`; only completed runs become the study's
    reference), which a `Stopper(trial_id, result)` never learns. Trials run in submission
    order, as with Tune's default FIFOScheduler.

    Each trial is a run `{study_id}-{trial_id}`; its config is the trial's config (top-level
    JSON values). A result must hold `time_attr` (the epoch; Tune's `training_iteration` by
    default) and the three metrics, under the names in `metrics`. The run's `max_epochs` is
    `max_epochs`, or the trial config's `max_epochs`.

    Fails open like the SDK: when the Oracle cannot be reached the trial continues.
    `decisions[trial_id]` holds each trial's last Decision.
    """

    def __init__(
        self,
        study_id: str,
        url: str | None = None,
        token: str | None = None,
        *,
        max_epochs: int | None = None,
        time_attr: str = "training_iteration",
        metrics: Sequence[str] = METRICS,
        dataset: str | None = None,
        timeout: float = 5.0,
        retries: int = 5,
        budget: float = 10.0,
        fail_open: bool = True,
    ) -> None:
        super().__init__()
        url = url or os.environ.get("ORACLE_URL")
        if not url:
            raise ValueError("no Oracle URL: pass url=... or set ORACLE_URL")
        if len(metrics) != 3:
            raise ValueError(f"metrics names mqe, topographic_error, dead_neuron_ratio: {metrics}")
        self.study_id = study_id
        self.url = url
        self.max_epochs = max_epochs
        self.time_attr = time_attr
        self.metric_keys = tuple(metrics)
        self.dataset = dataset
        self.decisions: dict[str, Decision] = {}
        self._oracle_args: dict[str, Any] = {
            "token": token,
            "timeout": timeout,
            "retries": retries,
            "budget": budget,
            "fail_open": fail_open,
        }
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._oracle: Oracle | None = None
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    # Tune pickles its configuration (the scheduler with it) to restore an experiment: an
    # HTTP connection pool does not pickle, and a restored experiment makes its own.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_oracle", "_runs", "_lock"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    # --- what Tune calls --------------------------------------------------------------------

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        if self.time_attr not in result:
            raise KeyError(f"a result of trial {trial.trial_id} has no {self.time_attr!r}")
        missing = [key for key in self.metric_keys if key not in result]
        if missing:
            raise KeyError(f"a result of trial {trial.trial_id} lacks the metrics {missing}")
        epoch = int(result[self.time_attr])
        run = self._run(trial)
        if run.status is not None:
            return TrialScheduler.STOP if run.status == "stopped" else TrialScheduler.CONTINUE
        decision = run.report(epoch, *(result[key] for key in self.metric_keys))
        self.decisions[trial.trial_id] = decision
        if epoch >= run.max_epochs:
            run.finish("completed")
            return TrialScheduler.CONTINUE  # the trial ends by itself
        if decision.should_stop:
            log.info("oracle: stopping trial %s at %d: %s", trial.trial_id, epoch, decision.reason)
            run.finish("stopped")
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        """The trial ended (by itself, or stopped here or by a Stopper)."""
        run = self._pop(trial)
        if run is not None and run.status is None:
            run.finish(run.natural_status())

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        run = self._pop(trial)
        if run is not None and run.status is None:
            run.finish("failed")

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        """A paused or pending trial removed: it will not go on."""
        run = self._pop(trial)
        if run is not None and run.status is None:
            run.finish("stopped")

    def debug_string(self) -> str:
        stopped = sum(d.should_stop for d in self.decisions.values())
        return (
            f"Using the Oracle at {self.url} (study {self.study_id}): "
            f"{stopped} of {len(self.decisions)} trials stopped."
        )

    # --- runs -------------------------------------------------------------------------------

    def run_id(self, trial: Trial) -> str:
        return f"{self.study_id}-{trial.trial_id}"

    def oracle(self) -> Oracle:
        with self._lock:
            if self._oracle is None:
                self._oracle = Oracle(self.url, **self._oracle_args)
            return self._oracle

    def _run(self, trial: Trial) -> Run:
        run = self._runs.get(trial.trial_id)
        if run is not None:
            return run
        config = _json_config(trial.config)
        max_epochs = self.max_epochs if self.max_epochs is not None else config.get("max_epochs")
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(
                "the Oracle needs each run's max_epochs: pass OracleScheduler(max_epochs=...) or "
                f"put an int 'max_epochs' in the trial's config (trial {trial.trial_id})"
            )
        run_id = self.run_id(trial)
        run = self.oracle().start_run(
            self.study_id, max_epochs, config=config, dataset=self.dataset, run_id=run_id
        )
        self._runs[trial.trial_id] = run
        return run

    def _pop(self, trial: Trial) -> Run | None:
        return self._runs.pop(trial.trial_id, None)


def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's top-level JSON scalars (a Tune config may also hold objects, or nested
    spaces that the Oracle's model does not read)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if hasattr(value, "item") and callable(value.item):  # a NumPy scalar
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            continue  # JSON has no NaN
        if value is None or isinstance(value, bool | str | int | float):
            out[str(key)] = value
    return out
