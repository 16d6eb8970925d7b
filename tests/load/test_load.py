"""64 concurrent workers against a real `oracle serve`, on SQLite and Postgres: no errors, and
every acknowledged checkpoint stored exactly once with its decision. Then several API
processes writing the same study at once: no "database is locked" reaches a worker.

Short versions for CI (LOAD_SECONDS, default 15); bench/load_soak.py runs the full 60 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.load.harness import Server, lost_or_changed, run_swarm

LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "15"))
WORKERS = 64

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_load_64_workers_get_no_errors_and_lose_nothing(database_url: str, tmp_path: Path) -> None:
    server = Server(database_url, tmp_path / "server.log").start()
    try:
        outcome = run_swarm([server.url], duration_s=LOAD_SECONDS, workers=WORKERS)
    finally:
        server.stop()
    summary = outcome.summary()
    assert outcome.errors == 0, (summary, server.tail())
    assert len(outcome.acknowledged) >= WORKERS, summary  # the load really ran
    assert lost_or_changed(outcome, database_url) == []
    assert "database is locked" not in server.tail(10**7)


def test_load_two_processes_writing_one_study_surface_no_lock_errors(
    database_url: str, tmp_path: Path
) -> None:
    first = Server(database_url, tmp_path / "first.log").start()
    second = Server(database_url, tmp_path / "second.log").start()
    try:
        # every request goes to the other process than the one before: each run, and the one
        # study they all share, is written by both processes at once
        outcome = run_swarm(
            [first.url, second.url], duration_s=LOAD_SECONDS, workers=WORKERS, study="shared"
        )
    finally:
        first.stop()
        second.stop()
    summary = outcome.summary()
    logs = first.tail(10**7) + second.tail(10**7)
    assert outcome.server_errors == 0, (summary, logs[-4000:])
    assert outcome.errors == 0, str(summary)  # a str: pytest cuts a dict's repr short
    assert "database is locked" not in logs
    assert lost_or_changed(outcome, database_url) == []
