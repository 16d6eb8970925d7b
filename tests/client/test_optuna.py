"""OraclePruner with the real optuna package against the real service: it prunes when the
Oracle says stop and only then, keeps the reason, shares an RDB storage between processes,
finishes the runs, and fails open."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from pathlib import Path

import httpx
import optuna
import pytest

from oracle_client import Oracle
from oracle_client.optuna import DECISION_ATTR, OraclePruner, report_som
from tests.client.doc_examples import DOCS, doc_example
from tests.client.service_process import WORKER_TOKEN, ServiceProcess

ADMIN_TOKEN = "admin-secret"  # service_process.py's admin role
MAX_EPOCHS = 10
# At every epoch, a "good" trial's score is below the absolute threshold 1.0 and a "bad"
# one's above it (score = mqe + te + 0.5 * dead).
CURVES = {"good": 0.2, "bad": 1.5}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def metrics(quality: str, epoch: int) -> tuple[float, float, float]:
    return CURVES[quality] + 0.5 / epoch, 0.05, 0.1


def objective(trial: optuna.Trial) -> float:
    """Ten epochs of a made-up map, reported the way a SOM trial reports them."""
    quality = trial.suggest_categorical("quality", list(CURVES))
    trial.set_user_attr("pid", os.getpid())
    score = float("inf")
    for epoch in range(1, MAX_EPOCHS + 1):
        score = report_som(trial, epoch, *metrics(quality, epoch))
        if trial.should_prune():
            raise optuna.TrialPruned()
    return score


def absolute_study(service: ServiceProcess, threshold: float = 1.0) -> str:
    """A fresh Oracle study that stops any run scoring above `threshold` after 10% progress:
    the decisions are then known in advance."""
    study_id = f"optuna-test-{uuid.uuid4().hex[:8]}"
    policy = {"threshold": {"mode": "absolute", "value": threshold}, "decider": "median"}
    answer = httpx.put(
        f"{service.url}/v1/studies/{study_id}",
        json={"policy": policy},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    answer.raise_for_status()
    return study_id


def stored_run(service: ServiceProcess, run_id: str) -> dict[str, object]:
    with Oracle(service.url, WORKER_TOKEN) as oracle:
        return oracle.get_run(run_id)


def enqueue(study: optuna.Study, *qualities: str) -> None:
    for quality in qualities:
        study.enqueue_trial({"quality": quality})


def test_pruner_prunes_when_the_oracle_says_stop_and_keeps_the_reason(
    shared_service: ServiceProcess,
) -> None:
    study_id = absolute_study(shared_service)
    pruner = OraclePruner(
        shared_service.url, WORKER_TOKEN, max_epochs=MAX_EPOCHS, study_id=study_id
    )
    study = optuna.create_study(study_name=study_id, pruner=pruner)
    enqueue(study, "good", "bad", "good")
    study.optimize(objective, n_trials=3, callbacks=[pruner])

    good, bad, good_again = study.trials
    assert good.state == good_again.state == optuna.trial.TrialState.COMPLETE
    assert good.last_step == MAX_EPOCHS
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.last_step == 1  # 1 / 10 epochs is the study's min_progress
    decision = bad.user_attrs[DECISION_ATTR]
    assert decision["action"] == "stop" and decision["policy"] == "median"
    assert "absolute threshold" in decision["reason"] and decision["epoch"] == 1
    assert good.user_attrs[DECISION_ATTR]["action"] == "continue"

    runs = [stored_run(shared_service, pruner.run_id(study, t)) for t in study.trials]
    assert [r["status"] for r in runs] == ["completed", "stopped", "completed"]
    assert [r["study_id"] for r in runs] == [study_id] * 3
    assert runs[0]["config"] == {"quality": "good"} and runs[0]["max_epochs"] == MAX_EPOCHS
    assert [c["epoch"] for c in runs[0]["checkpoints"]] == list(range(1, MAX_EPOCHS + 1))  # type: ignore[index]


def test_pruner_does_not_prune_while_the_oracle_has_nothing_to_compare_with(
    shared_service: ServiceProcess,
) -> None:
    # A default study: no stop before it has 5 finished runs, however bad the run.
    pruner = OraclePruner(shared_service.url, WORKER_TOKEN, max_epochs=MAX_EPOCHS)
    study = optuna.create_study(study_name=f"optuna-default-{uuid.uuid4().hex[:8]}", pruner=pruner)
    enqueue(study, "bad", "bad")
    study.optimize(objective, n_trials=2, callbacks=[pruner])
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in study.trials:
        run = stored_run(shared_service, pruner.run_id(study, trial))
        # the Oracle study is the Optuna study's name
        assert run["study_id"] == study.study_name and run["status"] == "completed"
        decisions = [c["decision"] for c in run["checkpoints"]]  # type: ignore[union-attr]
        assert {d["action"] for d in decisions} == {"continue"}
        assert {d["policy"] for d in decisions[:-1]} == {"warmup"}  # the last: "guard", the end


def test_callback_finishes_trials_that_end_early_or_fail(shared_service: ServiceProcess) -> None:
    study_id = absolute_study(shared_service)
    pruner = OraclePruner(
        shared_service.url, WORKER_TOKEN, max_epochs=MAX_EPOCHS, study_id=study_id
    )

    def short(trial: optuna.Trial) -> float:
        for epoch in range(1, 4):
            report_som(trial, epoch, *metrics("good", epoch))
            assert not trial.should_prune()
        report_som(trial, 4, *metrics("good", 4))  # a step the pruner is not asked about
        if trial.number == 1:
            raise RuntimeError("the training broke")
        return 0.5

    study = optuna.create_study(study_name=study_id, pruner=pruner)
    study.optimize(short, n_trials=2, callbacks=[pruner], catch=(RuntimeError,))
    ended, failed = (stored_run(shared_service, pruner.run_id(study, t)) for t in study.trials)
    assert ended["status"] == "stopped" and ended["last_epoch"] == 4
    assert failed["status"] == "failed"


@pytest.mark.slow
def test_pruner_shares_an_rdb_storage_between_two_processes(
    shared_service: ServiceProcess, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_id = absolute_study(shared_service)
    study = optuna.create_study(study_name=study_id, storage=storage)
    enqueue(study, "good", "bad", "bad", "good", "bad", "good")

    spawn = multiprocessing.get_context("spawn")  # no inherited HTTP pools or SQLite handles
    workers = [
        spawn.Process(target=_optimize, args=(storage, study_id, shared_service.url, 3))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=90)
        assert worker.exitcode == 0

    trials = optuna.load_study(study_name=study_id, storage=storage).trials
    assert len(trials) == 6 and len({t.user_attrs["pid"] for t in trials}) == 2
    for trial in trials:
        quality = trial.params["quality"]
        expected = {"good": optuna.trial.TrialState.COMPLETE, "bad": optuna.trial.TrialState.PRUNED}
        assert trial.state == expected[quality]
        assert trial.user_attrs[DECISION_ATTR]["action"] == (
            "continue" if quality == "good" else "stop"
        )
        run = stored_run(shared_service, f"optuna-{study_id}-{trial.number}")
        assert run["status"] == ("completed" if quality == "good" else "stopped")


def _optimize(storage: str, study_name: str, url: str, n_trials: int) -> None:
    """One worker process of a distributed Optuna search: its own pruner, the shared storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = OraclePruner(url, WORKER_TOKEN, max_epochs=MAX_EPOCHS)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    study.optimize(objective, n_trials=n_trials, callbacks=[pruner])


def test_pruner_fails_open_when_the_oracle_is_down(closed_url: str) -> None:
    pruner = OraclePruner(closed_url, max_epochs=MAX_EPOCHS, retries=1, budget=0.2)
    study = optuna.create_study(pruner=pruner)
    enqueue(study, "bad")
    study.optimize(objective, n_trials=1, callbacks=[pruner])
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.last_step == MAX_EPOCHS
    decision = trial.user_attrs[DECISION_ATTR]
    assert decision["policy"] == "fail-open" and decision["action"] == "continue"


def test_pruner_refuses_a_step_reported_without_its_metrics(closed_url: str) -> None:
    pruner = OraclePruner(closed_url, max_epochs=MAX_EPOCHS)
    study = optuna.create_study(pruner=pruner)

    def plain(trial: optuna.Trial) -> float:
        trial.report(0.5, 1)  # one float: nothing the Oracle can read
        trial.should_prune()
        return 0.5

    with pytest.raises(ValueError, match="report_som"):
        study.optimize(plain, n_trials=1)


def test_pruner_pickles_without_its_connection(closed_url: str) -> None:
    import pickle

    pruner = OraclePruner(closed_url, max_epochs=MAX_EPOCHS, study_id="s")
    pruner.oracle()
    copy = pickle.loads(pickle.dumps(pruner))
    assert copy.url == closed_url and copy.max_epochs == MAX_EPOCHS and copy.study_id == "s"
    assert copy.oracle() is not pruner.oracle()


def test_the_documented_example_runs_as_written(
    shared_service: ServiceProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/integrations/optuna.md's example (real MiniSom maps), with fewer trials."""
    monkeypatch.setenv("ORACLE_URL", shared_service.url)
    monkeypatch.setenv("ORACLE_TOKEN", WORKER_TOKEN)
    monkeypatch.chdir(tmp_path)  # its sqlite:///optuna.db
    source = doc_example(DOCS / "optuna.md").replace("n_trials=30", "n_trials=8")
    namespace: dict[str, object] = {"__name__": "optuna_example"}
    exec(compile(source, "docs/integrations/optuna.md", "exec"), namespace)

    study = optuna.load_study(study_name="iris-som", storage="sqlite:///optuna.db")
    assert len(study.trials) == 8 and study.best_value < 2.0
    for trial in study.trials:
        assert trial.user_attrs[DECISION_ATTR]["policy"] != "fail-open"
        run = stored_run(shared_service, f"optuna-iris-som-{trial.number}")
        assert run["config"] == trial.params
        assert run["status"] == ("stopped" if trial.state.name == "PRUNED" else "completed")
