"""End to end: `oracle serve` as a real process, real runs replayed by concurrent workers.

Every acknowledged checkpoint (every 200) must be stored exactly once with the decision the
worker heard, and a restarted server must still hold and serve those decisions.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from core.db import normalize_url
from core.tables import Checkpoint, Run
from tests.conftest import TOKENS, free_port, oracle_bin

N_RUNS = 50
N_WORKERS = 8
SEED = 7
START_TIMEOUT_S = 20.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


@dataclass
class Served:
    """A running `oracle serve` process."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(database_url: str, log: Path) -> Served:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ORACLE_TOKENS": ",".join(f"{role}:{token}" for role, token in TOKENS.items()),
    }
    env.pop("WEB_CONCURRENCY", None)
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [oracle_bin(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"oracle serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    served.stop()
    pytest.fail(f"oracle serve gave no 200 on /healthz in {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture
def server_log(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


@pytest.fixture
def served(database_url: str, server_log: Path) -> Iterator[Served]:
    server = serve(database_url, server_log)
    yield server
    server.stop()


@dataclass
class Replay:
    """What the workers heard: (run_id, epoch) -> decision, and how each run ended."""

    acknowledged: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def load_runs(data_file: Path) -> list[dict[str, Any]]:
    runs = [json.loads(line) for line in data_file.read_text().splitlines() if line.strip()]
    random.Random(SEED).shuffle(runs)
    return runs[:N_RUNS]


async def replay(base_url: str, runs: list[dict[str, Any]]) -> Replay:
    """N_WORKERS workers take runs from one queue and obey every decision."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for run in runs:
        queue.put_nowait(run)
    out = Replay()
    headers = {"Authorization": f"Bearer {TOKENS['worker']}"}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            run = queue.get_nowait()
            rid = run["run_id"]
            body = {
                "study_id": run["dataset"],
                "max_epochs": run["max_epochs"],
                "config": run["config"],
                "dataset": run["dataset"],
            }
            response = await client.put(f"/v1/runs/{rid}", json=body)
            if response.status_code not in (200, 201):
                out.failures.append(f"PUT {rid}: {response.status_code} {response.text}")
                continue
            status = "completed"
            for point in run["checkpoints"]:
                response = await client.post(f"/v1/runs/{rid}/checkpoints", json=point)
                if response.status_code != 200:
                    out.failures.append(f"{rid}@{point['epoch']}: {response.status_code}")
                    status = "failed"
                    break
                decision = response.json()
                out.acknowledged[(rid, point["epoch"])] = decision
                if decision["action"] == "stop":
                    status = "stopped"
                    break
            response = await client.post(f"/v1/runs/{rid}/finish", json={"status": status})
            if response.status_code != 200:
                out.failures.append(f"finish {rid}: {response.status_code} {response.text}")
            out.finished[rid] = status

    limits = httpx.Limits(max_connections=N_WORKERS)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=10, limits=limits
    ) as client:
        await asyncio.gather(*(worker(client) for _ in range(N_WORKERS)))
    return out


def stored_decisions(database_url: str) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    """Every stored checkpoint as (run_id, epoch, action, policy, reason), and run statuses."""
    engine = create_engine(normalize_url(database_url))
    try:
        with engine.connect() as conn:
            rows = [
                tuple(row)
                for row in conn.execute(
                    select(
                        Run.run_id,
                        Checkpoint.epoch,
                        Checkpoint.action,
                        Checkpoint.policy,
                        Checkpoint.reason,
                    ).join(Run, Run.pk == Checkpoint.run_pk)
                )
            ]
            statuses = {rid: status for rid, status in conn.execute(select(Run.run_id, Run.status))}
            duplicates = conn.execute(
                select(Checkpoint.run_pk, Checkpoint.epoch, func.count())
                .group_by(Checkpoint.run_pk, Checkpoint.epoch)
                .having(func.count() > 1)
            ).all()
            assert duplicates == []
    finally:
        engine.dispose()
    return rows, statuses


def assert_stored_exactly_once(replayed: Replay, database_url: str) -> None:
    rows, statuses = stored_decisions(database_url)
    keys = [(rid, epoch) for rid, epoch, *_ in rows]
    assert len(keys) == len(set(keys)), "a checkpoint is stored twice"
    stored = {(rid, epoch): (action, policy, reason) for rid, epoch, action, policy, reason in rows}
    heard = {
        key: (d["action"], d["policy"], d["reason"]) for key, d in replayed.acknowledged.items()
    }
    missing = sorted(set(heard) - set(stored))
    assert not missing, f"acknowledged but not stored: {missing[:5]}"
    # Nothing failed, so nothing unacknowledged may have been stored either.
    assert set(stored) == set(heard)
    differing = [key for key in heard if stored[key] != heard[key]]
    assert not differing, f"stored with another decision: {differing[:5]}"
    assert {rid: statuses[rid] for rid in replayed.finished} == replayed.finished


def test_replayed_checkpoints_are_stored_once_and_survive_a_restart(
    database_url: str, served: Served, server_log: Path, data_file: Path
) -> None:
    runs = load_runs(data_file)
    replayed = asyncio.run(asyncio.wait_for(replay(served.url, runs), timeout=35))

    assert replayed.failures == [], f"{replayed.failures[:5]}\n{server_log.read_text()[-2000:]}"
    assert len(replayed.finished) == N_RUNS
    actions = {d["action"] for d in replayed.acknowledged.values()}
    assert actions == {"continue", "stop"}, "the replay should exercise both decisions"
    assert_stored_exactly_once(replayed, database_url)

    served.stop()
    restarted = serve(database_url, server_log)
    try:
        headers = {"Authorization": f"Bearer {TOKENS['worker']}"}
        with httpx.Client(base_url=restarted.url, headers=headers, timeout=10) as client:
            for run in runs:
                rid = run["run_id"]
                detail = client.get(f"/v1/runs/{rid}")
                assert detail.status_code == 200
                served_back = {
                    (rid, c["epoch"]): c["decision"] for c in detail.json()["checkpoints"]
                }
                heard = {k: d for k, d in replayed.acknowledged.items() if k[0] == rid}
                assert served_back == heard
            # A retried checkpoint after the restart gets the decision stored before it.
            rid, epoch = next(iter(replayed.acknowledged))
            point = next(
                c
                for r in runs
                if r["run_id"] == rid
                for c in r["checkpoints"]
                if c["epoch"] == epoch
            )
            retry = client.post(f"/v1/runs/{rid}/checkpoints", json=point)
            assert retry.status_code == 200
            assert retry.json() == replayed.acknowledged[(rid, epoch)]
    finally:
        restarted.stop()
    assert_stored_exactly_once(replayed, database_url)
