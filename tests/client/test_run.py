"""Run against a real HTTP server: fail-open, catching up after an outage, finishing."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from oracle_client import Decision, InvalidInput, Oracle, OracleError, OracleUnavailable
from oracle_client.models import FAIL_OPEN
from tests.client.scripted import Received, Reply, ScriptedServer, contract_reply, decision


@pytest.fixture
def oracle(server: ScriptedServer) -> Iterator[Oracle]:
    with Oracle(server.url, "abc", timeout=0.5, retries=2, budget=1.0) as o:
        yield o


def unavailable(request: Received) -> Reply:
    return Reply(503, {"detail": "storage unavailable"}, headers={"Retry-After": "0"})


def checkpoint_epochs(server: ScriptedServer) -> list[int]:
    return [r.body["epoch"] for r in server.received if r.path.endswith("/checkpoints")]


def test_start_run_puts_the_run_under_a_client_chosen_id(
    server: ScriptedServer, oracle: Oracle
) -> None:
    a = oracle.start_run("iris-ea", 100, config={"x": 10, "sigma": 1.5}, dataset="iris")
    b = oracle.start_run("iris-ea", 100)
    assert a.run_id != b.run_id
    put = server.received[0]
    assert (put.method, put.path) == ("PUT", f"/v1/runs/{a.run_id}")
    assert put.body == {
        "study_id": "iris-ea",
        "max_epochs": 100,
        "config": {"x": 10, "sigma": 1.5},
        "dataset": "iris",
    }
    assert server.received[1].body == {"study_id": "iris-ea", "max_epochs": 100}
    assert a.registered


def test_report_returns_the_services_decision(server: ScriptedServer, oracle: Oracle) -> None:
    run = oracle.start_run("s", 50, run_id="ea7-g3-i12")
    server.add(Reply(200, decision("ea7-g3-i12", 5, "stop") | {"predicted_score": 0.4}))
    answer = run.report(5, 0.5, 0.1, 0.2, wall_s=1.25)
    assert answer.should_stop and answer.predicted_score == 0.4 and not answer.failed_open
    assert server.received[-1].body == {
        "epoch": 5,
        "mqe": 0.5,
        "topographic_error": 0.1,
        "dead_neuron_ratio": 0.2,
        "wall_s": 1.25,
    }


def test_report_fails_open_when_the_service_is_down(closed_url: str) -> None:
    oracle = Oracle(closed_url, "abc", timeout=0.5, retries=3, budget=0.8)
    run = oracle.start_run("s", 50)
    answer = run.report(1, 0.5, 0.1, 0.2)
    assert answer == Decision(
        run_id=run.run_id, epoch=1, action="continue", reason=answer.reason, policy=FAIL_OPEN
    )
    assert answer.failed_open and not answer.should_stop
    assert "ConnectError" in answer.reason and "continuing" in answer.reason


def test_report_fails_open_on_a_503_that_outlasts_the_budget(
    server: ScriptedServer, oracle: Oracle
) -> None:
    run = oracle.start_run("s", 50)
    server.fallback = unavailable
    answer = run.report(1, 0.5, 0.1, 0.2)
    assert answer.policy == FAIL_OPEN and "storage unavailable" in answer.reason


def test_report_raises_when_fail_open_is_off(closed_url: str) -> None:
    with pytest.raises(OracleUnavailable):
        Oracle(closed_url, budget=0.5, fail_open=False).start_run("s", 50)


def test_report_raises_a_refusal_even_when_failing_open(
    server: ScriptedServer, oracle: Oracle
) -> None:
    run = oracle.start_run("s", 50)
    server.add(Reply(422, {"detail": "mqe must be >= 0"}))
    with pytest.raises(InvalidInput, match="mqe must be >= 0"):
        run.report(1, -0.5, 0.1, 0.2)


def test_report_sends_held_back_checkpoints_first_in_order(
    server: ScriptedServer, oracle: Oracle
) -> None:
    run = oracle.start_run("s", 50)
    run.report(1, 0.9, 0.3, 0.2, wall_s=1.0)
    server.fallback = unavailable
    assert run.report(2, 0.8, 0.3, 0.2, wall_s=2.0).failed_open
    assert run.report(3, 0.7, 0.3, 0.2, wall_s=3.0).failed_open
    assert run.pending == 2
    server.fallback = contract_reply  # the service is back
    answer = run.report(4, 0.6, 0.3, 0.2, wall_s=4.0)
    assert not answer.failed_open and answer.epoch == 4
    assert run.pending == 0
    epochs = checkpoint_epochs(server)
    assert epochs[0] == 1 and epochs[-3:] == [2, 3, 4]
    # each held-back checkpoint went out with its original values, so a retry stays idempotent
    resent = [r.body for r in server.received if r.path.endswith("/checkpoints")][-3]
    assert resent == {
        "epoch": 2,
        "mqe": 0.8,
        "topographic_error": 0.3,
        "dead_neuron_ratio": 0.2,
        "wall_s": 2.0,
    }


def test_start_run_while_down_registers_at_the_first_report_that_gets_through(
    server: ScriptedServer,
) -> None:
    server.fallback = unavailable
    oracle = Oracle(server.url, "abc", timeout=0.5, retries=1, budget=0.5)
    run = oracle.start_run("s", 50)
    assert not run.registered
    assert run.report(1, 0.9, 0.3, 0.2).failed_open
    server.fallback = contract_reply
    run.report(2, 0.8, 0.3, 0.2)
    assert [(r.method, r.path) for r in server.received[-3:]] == [
        ("PUT", f"/v1/runs/{run.run_id}"),
        ("POST", f"/v1/runs/{run.run_id}/checkpoints"),
        ("POST", f"/v1/runs/{run.run_id}/checkpoints"),
    ]
    assert checkpoint_epochs(server)[-2:] == [1, 2]
    assert run.registered


def test_report_sends_non_finite_metrics_as_null(server: ScriptedServer, oracle: Oracle) -> None:
    run = oracle.start_run("s", 50)
    run.report(1, math.nan, math.inf, None)
    body = server.received[-1].body
    assert (body["mqe"], body["topographic_error"], body["dead_neuron_ratio"]) == (None,) * 3


def test_report_refuses_epochs_it_knows_are_wrong(oracle: Oracle) -> None:
    run = oracle.start_run("s", 50)
    run.report(10, 0.5, 0.1, 0.2)
    with pytest.raises(ValueError, match="below the last"):
        run.report(9, 0.5, 0.1, 0.2)
    with pytest.raises(ValueError, match="outside"):
        run.report(51, 0.5, 0.1, 0.2)
    with pytest.raises(TypeError):
        run.report(11, "0.5", 0.1, 0.2)  # type: ignore[arg-type]


def test_run_context_finishes_completed_at_the_last_epoch(
    server: ScriptedServer, oracle: Oracle
) -> None:
    with oracle.run("s", 3) as run:
        for epoch in (1, 2, 3):
            run.report(epoch, 0.5, 0.1, 0.2)
    assert server.received[-1].path == f"/v1/runs/{run.run_id}/finish"
    assert server.received[-1].body == {"status": "completed"}
    assert run.status == "completed"


def test_run_context_finishes_stopped_when_the_loop_ends_early(
    server: ScriptedServer, oracle: Oracle
) -> None:
    server.fallback = lambda r: (
        Reply(200, decision(r.path.split("/")[3], r.body["epoch"], "stop"))
        if r.path.endswith("/checkpoints")
        else contract_reply(r)
    )
    with oracle.run("s", 100) as run:
        for epoch in range(1, 101):
            if run.report(epoch, 0.5, 0.1, 0.2).should_stop:
                break
    assert run.last_epoch == 1
    assert server.received[-1].body == {"status": "stopped"}


def test_run_context_finishes_failed_on_an_exception_and_reraises_it(
    server: ScriptedServer, oracle: Oracle
) -> None:
    with pytest.raises(ZeroDivisionError), oracle.run("s", 100) as run:
        run.report(1, 0.5, 0.1, 0.2)
        1 / 0  # noqa: B018
    assert server.received[-1].body == {"status": "failed"}


def test_run_context_keeps_the_trainings_exception_when_finish_fails(
    server: ScriptedServer, oracle: Oracle
) -> None:
    with pytest.raises(KeyError), oracle.run("s", 100) as run:
        server.fallback = lambda r: Reply(409, {"detail": "run has ended"})
        raise KeyError("training broke")
    assert run.status is None


def test_finish_sends_final_metrics_and_flushes_held_back_checkpoints(
    server: ScriptedServer, oracle: Oracle
) -> None:
    run = oracle.start_run("s", 10)
    server.fallback = unavailable
    run.report(10, 0.5, 0.1, 0.2)
    server.fallback = contract_reply
    run.finish(
        "completed", final={"mqe": 0.4, "topographic_error": math.nan, "dead_neuron_ratio": 0.1}
    )
    assert [r.path.rsplit("/", 1)[-1] for r in server.received[-2:]] == ["checkpoints", "finish"]
    assert server.received[-1].body == {
        "status": "completed",
        "final": {"mqe": 0.4, "topographic_error": None, "dead_neuron_ratio": 0.1},
    }
    with pytest.raises(OracleError, match="already finished"):
        run.report(10, 0.5, 0.1, 0.2)
    run.finish("completed")  # the same again is a no-op
    with pytest.raises(OracleError, match="already finished"):
        run.finish("failed")


def test_finish_takes_a_conflict_on_the_same_status_as_done(
    server: ScriptedServer, oracle: Oracle
) -> None:
    run = oracle.start_run("s", 10)
    # as if an earlier attempt had ended the run and its answer was lost on the way back
    server.add(Reply(409, {"detail": "run has ended"}), Reply(200, {"status": "stopped"}))
    run.finish("stopped")
    assert run.status == "stopped"
    assert [r.method for r in server.received[-2:]] == ["POST", "GET"]


def test_finish_fails_open_when_the_service_is_down(closed_url: str) -> None:
    run = Oracle(closed_url, budget=0.3).start_run("s", 10)
    run.finish("completed")
    assert run.status == "completed"
