"""The SDK against the real service, which is killed and started again in the middle of a run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oracle_client import AuthError, Conflict, Decision, InvalidInput, Oracle
from tests.client.service_process import WORKER_TOKEN, ServiceProcess, running

pytestmark = pytest.mark.slow


def metrics(epoch: int) -> tuple[float, float, float]:
    """A plausible, strictly improving curve, distinct at every epoch."""
    return 2.0 / (1 + epoch), 0.5 / (1 + 0.1 * epoch), 0.3 - 0.01 * epoch


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """A service of this test's own, to kill and restart."""
    yield from running(tmp_path)


def test_run_survives_the_service_being_killed_and_restarted(service: ServiceProcess) -> None:
    oracle = Oracle(service.url, WORKER_TOKEN, timeout=2.0, retries=3, budget=2.0)
    answered: dict[int, Decision] = {}
    with oracle.run("outage", max_epochs=12, config={"x": 8, "y": 8}, dataset="iris") as run:
        for epoch in range(1, 5):
            answered[epoch] = run.report(epoch, *metrics(epoch))
        assert not any(d.failed_open for d in answered.values())

        service.kill()
        for epoch in (5, 6):
            started = time.monotonic()
            answered[epoch] = run.report(epoch, *metrics(epoch))
            assert time.monotonic() - started < 2.0 + 0.5  # the budget, not a hang
            assert answered[epoch].failed_open and answered[epoch].action == "continue"
            assert "ConnectError" in answered[epoch].reason
        assert run.pending == 2

        service.start()
        service.wait_ready()
        for epoch in range(7, 13):
            answered[epoch] = run.report(epoch, *metrics(epoch))
            assert not answered[epoch].failed_open
        assert run.pending == 0

    stored = oracle.get_run(run.run_id)
    assert stored["status"] == "completed"
    assert stored["dataset"] == "iris" and stored["config"] == {"x": 8, "y": 8}
    by_epoch = {c["epoch"]: c for c in stored["checkpoints"]}
    # every checkpoint the service acknowledged is stored with its decision, and the two that
    # were answered fail-open were sent again once it was back: the history has no gap
    assert sorted(by_epoch) == list(range(1, 13))
    for epoch, decision in answered.items():
        row = by_epoch[epoch]
        assert (row["mqe"], row["topographic_error"], row["dead_neuron_ratio"]) == pytest.approx(
            metrics(epoch)
        )
        if not decision.failed_open:
            assert Decision.model_validate(row["decision"]) == decision


def test_report_rides_out_a_restart_within_its_budget(service: ServiceProcess) -> None:
    patient = Oracle(service.url, WORKER_TOKEN, timeout=2.0, retries=1000, budget=90.0)
    run = patient.start_run("restart", max_epochs=10)
    run.report(1, *metrics(1))

    service.kill()
    service.start()  # not ready for seconds: the report below retries until it is
    answer = run.report(2, *metrics(2))
    assert not answer.failed_open
    assert answer.epoch == 2
    run.finish("stopped")
    stored = patient.get_run(run.run_id)
    assert [c["epoch"] for c in stored["checkpoints"]] == [1, 2]
    assert stored["status"] == "stopped"


def test_refusals_of_the_real_service_raise_typed_errors_with_its_detail(
    shared_service: ServiceProcess,
) -> None:
    service = shared_service
    oracle = Oracle(service.url, WORKER_TOKEN, budget=5.0)
    run = oracle.start_run("refusals", max_epochs=10, run_id="refusals-1")

    with pytest.raises(Conflict) as conflict:
        oracle.start_run("refusals", max_epochs=11, run_id="refusals-1")
    assert conflict.value.status_code == 409 and conflict.value.detail

    with pytest.raises(InvalidInput) as invalid:
        run.report(1, -1.0, 0.1, 0.2)
    assert invalid.value.status_code == 422 and invalid.value.detail

    with pytest.raises(AuthError) as denied:
        Oracle(service.url, "not-a-token", budget=5.0).start_run("refusals", 10)
    assert denied.value.status_code == 401

    # nothing was stored for the refused checkpoint
    assert oracle.get_run("refusals-1")["checkpoints"] == []


def test_a_diverged_map_is_reported_and_answered_stop(shared_service: ServiceProcess) -> None:
    oracle = Oracle(shared_service.url, WORKER_TOKEN, budget=5.0)
    with oracle.run("diverged", max_epochs=10) as run:
        run.report(1, *metrics(1))
        answer = run.report(2, float("nan"), float("inf"), 0.1)
    assert answer.should_stop and "diverged" in answer.reason
    stored = oracle.get_run(run.run_id)
    assert stored["status"] == "stopped"
    assert stored["checkpoints"][-1]["mqe"] is None
