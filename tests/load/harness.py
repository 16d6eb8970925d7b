"""A real `oracle serve` process, a bounded swarm of workers against it, and the check that
every acknowledged checkpoint is stored exactly once with the decision the worker heard.

Shared by tests/load, tests/faults and the bench/load_*.py scripts. Traffic goes to loopback
only; every run is bounded in time and in requests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from core.db import normalize_url
from tests.conftest import TOKENS, free_port, oracle_bin

START_TIMEOUT_S = 30.0
HEADERS = {"Authorization": f"Bearer {TOKENS['worker']}"}


@dataclass
class Server:
    """One `oracle serve` process (its own process group, so workers die with it)."""

    database_url: str
    log: Path
    port: int = field(default_factory=free_port)
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Server:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "ORACLE_TOKENS": ",".join(f"{role}:{token}" for role, token in TOKENS.items()),
            "ORACLE_LOG_LEVEL": "info",
            "ORACLE_MODEL_POLL_S": "0.5",
            **self.env,
        }
        env.pop("WEB_CONCURRENCY", None)
        command = [oracle_bin(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                command,
                env=env,
                cwd=self.log.parent,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"oracle serve exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"oracle serve was not ready in {timeout} s:\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: a crash, an OOM kill; no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@dataclass
class Outcome:
    """What the workers heard. `acknowledged` maps (run_id, epoch) to the decision's fields."""

    acknowledged: dict[tuple[str, int], tuple[str, str, str]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    retry_after_missing: int = 0
    checkpoint_latencies_s: list[float] = field(default_factory=list)
    # (monotonic time, status or -1 for a transport error, seconds taken) of every request
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    runs_started: int = 0
    runs_finished: int = 0
    requests: int = 0
    elapsed_s: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def errors(self) -> int:
        """Every answer that was not a success, and every request that got no answer."""
        bad = sum(n for status, n in self.statuses.items() if status >= 400)
        return bad + sum(self.transport_errors.values())

    def percentile_ms(self, q: float) -> float:
        values = sorted(self.checkpoint_latencies_s)
        if not values:
            return float("nan")
        return 1000 * values[min(len(values) - 1, int(q / 100 * len(values)))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "req_per_s": round(self.requests / self.elapsed_s, 1) if self.elapsed_s else 0,
            "checkpoints_acknowledged": len(self.acknowledged),
            "runs_started": self.runs_started,
            "runs_finished": self.runs_finished,
            "statuses": dict(self.statuses),
            "transport_errors": dict(self.transport_errors),
            "checkpoint_p50_ms": round(self.percentile_ms(50), 1),
            "checkpoint_p99_ms": round(self.percentile_ms(99), 1),
        }


def metrics_at(epoch: int, seed: int) -> dict[str, float]:
    """A plausible, improving curve; distinct per run so a mixed-up row would show."""
    wobble = (seed % 97) / 1000
    return {
        "mqe": round(2.0 / (1 + epoch) + wobble, 6),
        "topographic_error": round(0.5 / (1 + 0.1 * epoch), 6),
        "dead_neuron_ratio": round(max(0.0, 0.3 - 0.01 * epoch), 6),
    }


async def swarm(
    urls: Sequence[str],
    *,
    duration_s: float,
    workers: int = 64,
    max_requests: int = 200_000,
    max_epochs: int = 20,
    study: str = "load",
    prefix: str = "w",
    timeout_s: float = 5.0,
    retry: bool = False,
    on_tick: Callable[[float], None] | None = None,
) -> Outcome:
    """`workers` concurrent workers for `duration_s`, each training runs one after another.

    A worker sends each request to the next URL in turn, so with several servers every run is
    written by all of them. With `retry`, a checkpoint that got no answer or a 503 is sent
    again (the safe retry) until it is acknowledged or time is up; otherwise the run is
    abandoned, as a worker that gives up would.
    """
    out = Outcome()
    started = time.monotonic()
    deadline = started + duration_s
    limits = httpx.Limits(max_connections=workers * 2, max_keepalive_connections=workers * 2)

    async with httpx.AsyncClient(headers=HEADERS, timeout=timeout_s, limits=limits) as client:
        turn = 0

        async def send(method: str, path: str, body: dict[str, Any]) -> httpx.Response | None:
            nonlocal turn
            url = urls[turn % len(urls)]
            turn += 1
            out.requests += 1
            t0 = time.monotonic()
            try:
                response = await client.request(method, url + path, json=body)
            except httpx.TransportError as e:
                out.transport_errors[type(e).__name__] += 1
                out.timeline.append((t0, -1, time.monotonic() - t0))
                return None
            out.timeline.append((t0, response.status_code, time.monotonic() - t0))
            out.statuses[response.status_code] += 1
            if response.status_code == 503 and "retry-after" not in response.headers:
                out.retry_after_missing += 1
            return response

        async def one_worker(index: int) -> None:
            n = 0
            while time.monotonic() < deadline and out.requests < max_requests:
                n += 1
                run_id = f"{prefix}{index}-{n}"
                seed = hash(run_id) & 0xFFFF
                body = {"study_id": study, "max_epochs": max_epochs, "config": {"w": index}}
                created = await send("PUT", f"/v1/runs/{run_id}", body)
                while retry and (created is None or created.status_code == 503):
                    if time.monotonic() >= deadline:
                        return
                    await asyncio.sleep(0.2)
                    created = await send("PUT", f"/v1/runs/{run_id}", body)
                if created is None or created.status_code not in (200, 201):
                    continue
                out.runs_started += 1
                status = "completed"
                for epoch in range(1, max_epochs + 1):
                    point = {"epoch": epoch, **metrics_at(epoch, seed), "wall_s": 0.01 * epoch}
                    while True:
                        t0 = time.monotonic()
                        answer = await send("POST", f"/v1/runs/{run_id}/checkpoints", point)
                        if answer is not None and answer.status_code == 200:
                            out.checkpoint_latencies_s.append(time.monotonic() - t0)
                            decision = answer.json()
                            out.acknowledged[(run_id, epoch)] = (
                                decision["action"],
                                decision["policy"],
                                decision["reason"],
                            )
                            break
                        transient = answer is None or answer.status_code == 503
                        if not (retry and transient) or time.monotonic() >= deadline:
                            return
                        await asyncio.sleep(0.2)
                    if decision["action"] == "stop":
                        status = "stopped"
                        break
                    if time.monotonic() >= deadline:
                        return
                finished = await send("POST", f"/v1/runs/{run_id}/finish", {"status": status})
                if finished is not None and finished.status_code == 200:
                    out.runs_finished += 1

        async def ticker() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                if on_tick is not None:
                    on_tick(time.monotonic() - started)

        await asyncio.gather(ticker(), *(one_worker(i) for i in range(workers)))
    out.elapsed_s = time.monotonic() - started
    return out


@dataclass
class Stored:
    checkpoints: dict[tuple[str, int], tuple[str, str, str]]
    duplicates: int
    inconsistent_runs: list[str]


def stored(database_url: str) -> Stored:
    """Every stored checkpoint with its decision, and the runs whose counters disagree."""
    engine = create_engine(normalize_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT r.run_id, c.epoch, c.action, c.policy, c.reason "
                    "FROM checkpoints c JOIN runs r ON r.pk = c.run_pk"
                )
            ).all()
            inconsistent = conn.execute(
                text(
                    "SELECT r.run_id FROM runs r LEFT JOIN ("
                    "  SELECT run_pk, COUNT(*) AS n, MAX(epoch) AS last FROM checkpoints"
                    "  GROUP BY run_pk) c ON c.run_pk = r.pk "
                    "WHERE r.n_checkpoints != COALESCE(c.n, 0) "
                    "   OR COALESCE(r.last_epoch, -1) != COALESCE(c.last, -1)"
                )
            ).all()
            half_written = conn.execute(
                text(
                    "SELECT COUNT(*) FROM checkpoints WHERE action IS NULL OR policy IS NULL "
                    "OR reason IS NULL OR action NOT IN ('continue', 'stop')"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    checkpoints: dict[tuple[str, int], tuple[str, str, str]] = {}
    duplicates = 0
    for run_id, epoch, action, policy, reason in rows:
        key = (run_id, int(epoch))
        duplicates += key in checkpoints
        checkpoints[key] = (action, policy, reason)
    return Stored(checkpoints, duplicates + int(half_written), [r[0] for r in inconsistent])


def lost_or_changed(outcome: Outcome, database_url: str) -> list[str]:
    """Acknowledged checkpoints missing from the database or stored with another decision."""
    db = stored(database_url)
    problems = [f"duplicate or half-written rows: {db.duplicates}"] if db.duplicates else []
    problems += [f"run {r}: counters disagree with its rows" for r in db.inconsistent_runs]
    for key, decision in outcome.acknowledged.items():
        if key not in db.checkpoints:
            problems.append(f"{key} acknowledged but not stored")
        elif db.checkpoints[key] != decision:
            problems.append(f"{key} stored as {db.checkpoints[key]}, answered {decision}")
    return problems


def run_swarm(urls: Sequence[str], **kwargs: Any) -> Outcome:
    return asyncio.run(swarm(urls, **kwargs))
