"""Fixtures of the SDK's tests: a scripted HTTP server, a port where nothing listens, and the
real service as a process."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.client.scripted import ScriptedServer
from tests.client.service_process import ServiceProcess, running


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One real service for the slow tests that leave it running."""
    yield from running(tmp_path_factory.mktemp("service"))
