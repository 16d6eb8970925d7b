"""`oracle serve` and `oracle migrate` against the schema: replicas that start together on an
empty database, and the one-line refusals (migrating off and the schema behind; the database
ahead of the code), on a real SQLite file and on a fresh Postgres database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from core.schema import upgrade
from migrations import HEAD
from tests.conftest import (
    TOKENS,
    alembic_versions,
    auth,
    free_port,
    oracle_bin,
    set_alembic_version,
)
from tests.load.harness import Server

pytestmark = pytest.mark.timeout(180)
POINT = {"epoch": 1, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1}


def _oracle(args: list[str], url: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DATABASE_URL": url,
        "ORACLE_TOKENS": ",".join(f"{role}:{token}" for role, token in TOKENS.items()),
        **env,
    }
    environment.pop("ORACLE_MIGRATE_ON_START", None)
    environment.update(env)
    return subprocess.run(
        [oracle_bin(), *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit code 2 and one line on stderr saying why (no traceback), naming `words`."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    refusal = lines[-1]
    for word in words:
        assert word in refusal, (word, done.stderr)


def _serve_args() -> list[str]:
    return ["serve", "--host", "127.0.0.1", "--port", str(free_port())]


def test_serve_replicas_started_together_on_an_empty_database_both_serve(
    empty_database_url: str, tmp_path: Path
) -> None:
    """Two replicas, no `oracle migrate` before them: one migrates under the lock, the other
    waits for it; both come up and store runs and checkpoints; the schema is at head once."""
    url = empty_database_url
    servers = [Server(url, tmp_path / f"api-{n}.log") for n in "ab"]
    try:
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_ready(timeout=60)
        with httpx.Client(headers=auth("worker"), timeout=10) as client:
            for n, server in enumerate(servers):
                run = f"{server.url}/v1/runs/r{n}"
                put = client.put(run, json={"study_id": "s", "max_epochs": 10})
                assert put.status_code == 201, (put.text, server.tail())
                point = client.post(f"{run}/checkpoints", json=POINT)
                assert point.status_code == 200, (point.text, server.tail())
                assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        for server in servers:
            server.stop()
    assert alembic_versions(url) == [HEAD]


def test_serve_with_migrating_off_refuses_a_schema_behind_and_names_the_command(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    off = {"ORACLE_MIGRATE_ON_START": "0"}
    _assert_refused(_oracle(_serve_args(), url, tmp_path, **off), "no schema", "oracle migrate")
    upgrade(url)
    set_alembic_version(url, None)  # downgraded under it: behind
    _assert_refused(_oracle(_serve_args(), url, tmp_path, **off), "oracle migrate")
    migrated = _oracle(["migrate"], url, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert alembic_versions(url) == [HEAD]


def test_serve_and_migrate_refuse_a_database_ahead_of_the_code(
    empty_database_url: str, tmp_path: Path
) -> None:
    url = empty_database_url
    upgrade(url)
    set_alembic_version(url, "9999_newer")
    for env in ({}, {"ORACLE_MIGRATE_ON_START": "0"}, {"ORACLE_MIGRATE_ON_START": "1"}):
        _assert_refused(_oracle(_serve_args(), url, tmp_path, **env), "9999_newer", "ahead")
    _assert_refused(_oracle(["migrate"], url, tmp_path), "9999_newer", "ahead")
    assert alembic_versions(url) == ["9999_newer"]  # nothing touched


def test_serve_refuses_a_database_it_cannot_reach_in_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://nobody@127.0.0.1:{port}/nothing"
    _assert_refused(_oracle(_serve_args(), url, tmp_path), "cannot be used")
