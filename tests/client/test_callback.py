"""The callback shape: one call per checkpoint, the run finished by the callback itself."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from oracle_client import Oracle
from tests.client.scripted import Received, Reply, ScriptedServer, contract_reply, decision


def stop_at(epoch: int) -> Callable[[Received], Reply]:
    def reply(request: Received) -> Reply:
        if request.path.endswith("/checkpoints"):
            action = "stop" if request.body["epoch"] >= epoch else "continue"
            return Reply(200, decision(request.path.split("/")[3], request.body["epoch"], action))
        return contract_reply(request)

    return reply


def test_callback_says_stop_and_finishes_the_run_as_stopped(server: ScriptedServer) -> None:
    server.fallback = stop_at(3)
    on_checkpoint = Oracle(server.url, "abc").callback("s", max_epochs=10, config={"x": 5})
    stopped_at = None
    for epoch in range(1, 11):
        if on_checkpoint(epoch, 0.5, 0.1, 0.2):
            stopped_at = epoch
            break
    assert stopped_at == 3
    assert on_checkpoint.last_decision is not None and on_checkpoint.last_decision.should_stop
    assert server.received[-1].body == {"status": "stopped"}
    assert on_checkpoint.run.status == "stopped"


def test_callback_finishes_the_run_as_completed_at_its_last_epoch(server: ScriptedServer) -> None:
    on_checkpoint = Oracle(server.url, "abc").callback("s", max_epochs=4)
    assert [on_checkpoint(epoch, 0.5, 0.1, 0.2) for epoch in (1, 2, 4)] == [False, False, True]
    assert server.received[-1].body == {"status": "completed"}


def test_callback_as_context_finishes_failed_on_an_exception(server: ScriptedServer) -> None:
    with pytest.raises(RuntimeError), Oracle(server.url).callback("s", 10) as on_checkpoint:
        on_checkpoint(1, 0.5, 0.1, 0.2)
        raise RuntimeError("out of memory")
    assert server.received[-1].body == {"status": "failed"}
