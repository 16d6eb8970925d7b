"""Oracle: configuration from arguments and the environment."""

from __future__ import annotations

import pytest

from oracle_client import Oracle
from tests.client.scripted import ScriptedServer


def test_oracle_reads_url_and_token_from_the_environment(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORACLE_URL", server.url + "/")
    monkeypatch.setenv("ORACLE_TOKEN", "from-env")
    with Oracle() as oracle:
        oracle.start_run("s", 10)
    assert server.received[0].headers["authorization"] == "Bearer from-env"


def test_oracle_arguments_win_over_the_environment(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORACLE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ORACLE_TOKEN", "from-env")
    with Oracle(server.url, "given") as oracle:
        oracle.start_run("s", 10)
    assert server.received[0].headers["authorization"] == "Bearer given"


def test_oracle_without_a_url_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORACLE_URL", raising=False)
    with pytest.raises(ValueError, match="ORACLE_URL"):
        Oracle()


def test_oracle_sends_no_authorization_without_a_token(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORACLE_TOKEN", raising=False)
    Oracle(server.url).start_run("s", 10)
    assert "authorization" not in server.received[0].headers
