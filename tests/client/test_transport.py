"""Transport against a real HTTP server: which failures are retried, how long, what is raised."""

from __future__ import annotations

import time

import pytest

from oracle_client.errors import (
    AuthError,
    Conflict,
    InvalidInput,
    NotFound,
    OracleHTTPError,
    OracleUnavailable,
    ServerError,
)
from oracle_client.retry import RetryPolicy
from oracle_client.transport import Transport
from tests.client.scripted import Reply, ScriptedServer

OK = Reply(200, {"ok": True})


def transport(
    url: str, *, retries: int = 4, budget: float = 5.0, timeout: float = 2.0
) -> Transport:
    policy = RetryPolicy(retries=retries, budget_s=budget, base_s=0.05, cap_s=0.2)
    return Transport(url, "abc", timeout=timeout, policy=policy)


@pytest.mark.parametrize("status", [502, 503, 504, 429])
def test_transport_retries_unavailable_statuses_then_succeeds(
    server: ScriptedServer, status: int
) -> None:
    server.add(Reply(status, {"detail": "storage unavailable"}), Reply(status), OK)
    assert transport(server.url).request("GET", "/x") == {"ok": True}
    assert len(server.received) == 3


def test_transport_honours_retry_after(server: ScriptedServer) -> None:
    server.add(Reply(503, {"detail": "busy"}, headers={"Retry-After": "1"}), OK)
    transport(server.url).request("GET", "/x")
    first, second = server.received
    assert second.at - first.at >= 1.0


def test_transport_gives_up_at_once_when_retry_after_passes_the_budget(
    server: ScriptedServer,
) -> None:
    server.add(Reply(503, {"detail": "down for maintenance"}, headers={"Retry-After": "60"}))
    started = time.monotonic()
    with pytest.raises(OracleUnavailable, match="down for maintenance"):
        transport(server.url, budget=3.0).request("GET", "/x")
    assert time.monotonic() - started < 1.0
    assert len(server.received) == 1


def test_transport_stops_after_its_retries(server: ScriptedServer) -> None:
    server.fallback = lambda request: Reply(503, {"detail": "no database"})
    with pytest.raises(OracleUnavailable, match="gave up after 3 attempts"):
        transport(server.url, retries=2).request("GET", "/x")
    assert len(server.received) == 3


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFound),
        (409, Conflict),
        (413, InvalidInput),
        (422, InvalidInput),
        (418, OracleHTTPError),
    ],
)
def test_transport_raises_the_typed_error_with_the_servers_detail_and_no_retry(
    server: ScriptedServer, status: int, error: type[OracleHTTPError]
) -> None:
    detail = [{"loc": ["body", "mqe"], "msg": "must be >= 0"}]
    server.add(Reply(status, {"detail": detail}))
    with pytest.raises(error) as caught:
        transport(server.url).request("POST", "/v1/runs/r1/checkpoints", {"epoch": 1})
    assert caught.type is error
    assert caught.value.status_code == status
    assert caught.value.detail == detail
    assert "/v1/runs/r1/checkpoints" in str(caught.value)
    assert len(server.received) == 1


def test_transport_does_not_retry_a_server_fault(server: ScriptedServer) -> None:
    server.add(Reply(500, {"detail": "internal error"}))
    with pytest.raises(ServerError) as caught:
        transport(server.url).request("GET", "/x")
    assert isinstance(caught.value, OracleUnavailable)  # so it fails open too
    assert len(server.received) == 1


def test_transport_retries_after_a_timeout(server: ScriptedServer) -> None:
    server.add(Reply(200, {"late": True}, delay=1.0), OK)
    assert transport(server.url, timeout=0.3).request("GET", "/x") == {"ok": True}
    assert len(server.received) == 2


def test_transport_retries_a_dropped_connection(server: ScriptedServer) -> None:
    server.add(Reply(drop=True), OK)
    assert transport(server.url).request("GET", "/x") == {"ok": True}


def test_transport_bounds_the_total_time_when_nothing_listens(closed_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(OracleUnavailable, match="ConnectError"):
        transport(closed_url, retries=1000, budget=1.0).request("GET", "/x")
    assert time.monotonic() - started < 1.3


def test_transport_bounds_the_total_time_when_the_server_hangs(server: ScriptedServer) -> None:
    server.fallback = lambda request: Reply(200, delay=5.0)
    started = time.monotonic()
    with pytest.raises(OracleUnavailable, match="Timeout"):
        transport(server.url, budget=1.5, timeout=10.0).request("GET", "/x")
    assert time.monotonic() - started < 2.0


def test_transport_treats_a_non_json_success_as_unavailable(server: ScriptedServer) -> None:
    server.add(Reply(200, raw=b"<html>a proxy's page</html>"))
    with pytest.raises(OracleUnavailable, match="not JSON"):
        transport(server.url).request("GET", "/x")


def test_transport_sends_the_bearer_token(server: ScriptedServer) -> None:
    server.add(OK)
    transport(server.url).request("GET", "/x")
    assert server.received[0].headers["authorization"] == "Bearer abc"
