"""Replays data/minisom_runs.jsonl.gz through a real uvicorn process and times it.

Each concurrent worker takes runs from one shared queue (a seeded arrival order), PUTs the
run, posts its checkpoints in order obeying every decision (stop -> finish as stopped; last
checkpoint -> finish as completed). The same server process then serves the same request mix
to bench-only "bare" routes (bench/bare_app.py: same validation and auth, constant answers),
so the ratio checkpoint/bare is what storing and deciding cost. Also measured: server RSS
after the run, start-up time of `oracle serve`, and the median policy's decision quality.

    python bench/replay.py --backend both --workers 1,16,64 --repeat 3

The load generator is this file: a minimal HTTP/1.1 keep-alive client on asyncio streams
(uvloop when installed), one connection per worker, requests pre-encoded before the clock
starts; its CPU time per request is printed so that its own ceiling is known.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import itertools
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.datafile import open_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scratch-database helper lives in tests/
DATA_FILE = ROOT / "data" / "minisom_runs.jsonl.gz"
TOKEN = "bench-worker-token"
TOKENS = f"worker:{TOKEN},admin:bench-admin-token"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT_S = 30.0


# --- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    run_id: str
    dataset: str
    max_epochs: int
    config: dict[str, Any]
    checkpoints: tuple[dict[str, Any], ...]
    final: dict[str, float | None]


def load_runs(path: Path, n: int | None, seed: int) -> list[RunData]:
    """The runs of the file in a seeded arrival order; the first `n` of that order."""
    runs = []
    with open_text(path) as f:
        for line in f:
            raw = json.loads(line)
            runs.append(
                RunData(
                    run_id=raw["run_id"],
                    dataset=raw["dataset"],
                    max_epochs=int(raw["max_epochs"]),
                    config=raw["config"],
                    checkpoints=tuple(raw["checkpoints"]),
                    final=raw["final"],
                )
            )
    random.Random(seed).shuffle(runs)
    return runs[:n] if n else runs


def quality_score(final: dict[str, float | None], median_mqe: float) -> float:
    """The data README's score: MQE over the data set's median final MQE + TE + 0.5 * dead."""
    values = (final.get("mqe"), final.get("topographic_error"), final.get("dead_neuron_ratio"))
    if any(v is None for v in values):
        return float("inf")
    mqe, te, dead = (float(v) for v in values)  # type: ignore[arg-type]
    return mqe / median_mqe + te + 0.5 * dead


def decision_quality(runs: Sequence[RunData], outcomes: dict[str, RunOutcome]) -> dict[str, float]:
    """Epochs saved (1 - run/planned, summed over runs) and recall of the best 10% of runs."""
    by_dataset: dict[str, list[float]] = {}
    for run in runs:
        mqe = run.final.get("mqe")
        if mqe is not None:
            by_dataset.setdefault(run.dataset, []).append(float(mqe))
    medians = {name: statistics.median(values) for name, values in by_dataset.items()}
    scores = sorted(runs, key=lambda r: quality_score(r.final, medians[r.dataset]))
    best = scores[: max(1, round(len(runs) * 0.1))]
    # A run with no outcome (its client process failed: reported among the errors) counts as
    # run to the end and kept, so that a broken replay never looks like a saving.
    never = RunOutcome(0, False, 0)
    planned = sum(r.max_epochs for r in runs)
    ran = sum(outcomes[r.run_id].epochs_run if r.run_id in outcomes else r.max_epochs for r in runs)
    kept = sum(not outcomes.get(r.run_id, never).stopped for r in best)
    stopped = sum(o.stopped for o in outcomes.values())
    return {
        "epochs_saved": 1 - ran / planned,
        "recall_best10": kept / len(best),
        "stopped_share": stopped / len(runs),
    }


# --- requests, pre-encoded ---------------------------------------------------------------------


def _request(method: str, path: str, body: dict[str, Any], port: int) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


@dataclass(frozen=True)
class Script:
    """One run's requests: PUT, each checkpoint, finish stopped, finish completed."""

    run_id: str
    put: bytes
    checkpoints: tuple[tuple[int, bytes], ...]
    finish_stopped: bytes
    finish_completed: bytes
    # Seconds of "training" before each checkpoint (paced replays only).
    gaps: tuple[float, ...] = ()


def training_gaps(run: RunData, pace: float) -> tuple[float, ...]:
    """The run's recorded training time between checkpoints (wall_s), `pace` times faster."""
    if pace <= 0:
        return ()
    walls = [float(c.get("wall_s") or 0.0) for c in run.checkpoints]
    return tuple(max(0.0, b - a) / pace for a, b in zip([0.0, *walls[:-1]], walls, strict=True))


def scripts_for(
    runs: Sequence[RunData], port: int, *, bare: bool, pace: float = 0.0
) -> list[Script]:
    prefix = "/bench/bare" if bare else "/v1/runs"
    out = []
    for run in runs:
        base = f"{prefix}/{run.run_id}"
        put = {
            "study_id": run.dataset,
            "max_epochs": run.max_epochs,
            "config": run.config,
            "dataset": run.dataset,
        }
        checkpoints = tuple(
            (
                int(c["epoch"]),
                _request(
                    "POST",
                    f"{base}/checkpoints",
                    {
                        "epoch": c["epoch"],
                        "mqe": c["mqe"],
                        "topographic_error": c["topographic_error"],
                        "dead_neuron_ratio": c["dead_neuron_ratio"],
                        "wall_s": c.get("wall_s"),
                    },
                    port,
                ),
            )
            for c in run.checkpoints
        )
        out.append(
            Script(
                run.run_id,
                _request("PUT", base, put, port),
                checkpoints,
                _request("POST", f"{base}/finish", {"status": "stopped"}, port),
                _request("POST", f"{base}/finish", {"status": "completed"}, port),
                training_gaps(run, pace),
            )
        )
    return out


# --- the load generator ------------------------------------------------------------------------


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; a request is sent only after the last answer."""

    def __init__(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.port = port
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(port, *await cls._connect(port))

    @staticmethod
    async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def call(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as e:
            if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                raise
            # The server closed the idle keep-alive connection (a paced worker "trained"
            # longer than uvicorn's keep-alive timeout) before reading the request: reconnect
            # and send it again, as HTTP clients do.
            self.writer.close()
            self.reader, self.writer = await self._connect(self.port)
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        start = head.lower().find(b"content-length:")
        if start < 0:
            raise HttpError(f"no content-length in {head[:200]!r}")
        end = head.find(b"\r\n", start)
        body = await self.reader.readexactly(int(head[start + 15 : end]))
        return status, body

    def close(self) -> None:
        self.writer.close()


@dataclass
class RunOutcome:
    epochs_run: int
    stopped: bool
    n_checkpoints: int
    error: str | None = None


@dataclass
class ClientResult:
    started: float
    ended: float
    cpu_s: float
    checkpoint_ns: list[int] = field(default_factory=list)
    checkpoint_at_ns: list[int] = field(default_factory=list)  # when each was sent
    n_requests: int = 0
    outcomes: dict[str, RunOutcome] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def _worker(
    port: int,
    scripts: Sequence[Script],
    queue: Any,
    limits: dict[str, int] | None,
    result: ClientResult,
    obey: bool = True,
) -> None:
    """Takes runs from the shared queue until it is empty; obeys decisions unless `limits`.

    With `limits` (the bare phase) a run posts exactly as many checkpoints as the real phase
    did, so both phases serve the same request mix. With `obey` false a run posts all its
    checkpoints and finishes completed whatever it is told; its outcome is where it would have
    stopped (so that two policies serve the very same requests).
    """
    conn = await Connection.open(port)
    latencies = result.checkpoint_ns
    sent_at = result.checkpoint_at_ns
    clock = time.perf_counter_ns
    try:
        while True:
            with queue.get_lock():
                index = queue.value
                queue.value += 1
            if index >= len(scripts):
                return
            script = scripts[index]
            status, body = await conn.call(script.put)
            result.n_requests += 1
            if status not in (200, 201):
                result.errors.append(f"PUT {script.run_id}: {status} {body[:200]!r}")
                continue
            limit = limits[script.run_id] if limits is not None else len(script.checkpoints)
            last_epoch, stopped, sent, error, told_at = 0, False, 0, None, 0
            for n, (epoch, request) in enumerate(script.checkpoints[:limit]):
                if script.gaps:
                    await asyncio.sleep(script.gaps[n])  # the worker trains its map
                t0 = clock()
                status, body = await conn.call(request)
                latencies.append(clock() - t0)
                sent_at.append(t0)
                result.n_requests += 1
                sent += 1
                last_epoch = epoch
                if status != 200:
                    error = f"checkpoint {script.run_id}@{epoch}: {status} {body[:200]!r}"
                    break
                if limits is None and not stopped and b'"action":"stop"' in body:
                    stopped, told_at = True, epoch
                    if obey:
                        break
            if error is not None:
                result.errors.append(error)
                finish = script.finish_stopped
            else:
                finish = script.finish_stopped if stopped and obey else script.finish_completed
            status, body = await conn.call(finish)
            result.n_requests += 1
            if status != 200:
                result.errors.append(f"finish {script.run_id}: {status} {body[:200]!r}")
            epochs_run = told_at if stopped else last_epoch
            result.outcomes[script.run_id] = RunOutcome(epochs_run, stopped, sent, error)
    finally:
        conn.close()


def _client_process(
    port: int,
    scripts: Sequence[Script],
    queue: Any,
    limits: dict[str, int] | None,
    n_workers: int,
    go: Any,
    out: Any,
    obey: bool = True,
) -> None:
    """One client process: `n_workers` coroutines on one event loop, started by `go`."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    go.wait()
    cpu0 = time.process_time()
    result = ClientResult(time.perf_counter(), 0.0, 0.0)

    async def main() -> None:
        await asyncio.gather(
            *(_worker(port, scripts, queue, limits, result, obey) for _ in range(n_workers))
        )

    try:
        asyncio.run(main())
    except Exception as e:  # reported, not hung on: the parent waits for this result
        result.errors.append(f"client process failed: {e!r}")
    result.ended = time.perf_counter()
    result.cpu_s = time.process_time() - cpu0
    out.put(result)


@dataclass
class PhaseResult:
    wall_s: float
    client_cpu_s: float
    n_checkpoints: int
    n_requests: int
    p50_ms: float
    p99_ms: float
    outcomes: dict[str, RunOutcome]
    errors: list[str]
    # Each checkpoint request: seconds from the phase's start to its sending, and milliseconds
    # to its answer (for --latency-log).
    timeline: list[tuple[float, float]] = field(default_factory=list)
    server_cpu_s: float = 0.0

    @property
    def server_us_per_decision(self) -> float:
        return 1e6 * self.server_cpu_s / max(1, self.n_checkpoints)

    @property
    def decisions_per_s(self) -> float:
        return self.n_checkpoints / self.wall_s

    @property
    def requests_per_s(self) -> float:
        return self.n_requests / self.wall_s

    @property
    def client_us_per_request(self) -> float:
        return 1e6 * self.client_cpu_s / max(1, self.n_requests)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_phase(
    port: int,
    scripts: Sequence[Script],
    workers: int,
    clients: int,
    limits: dict[str, int] | None = None,
    obey: bool = True,
) -> PhaseResult:
    """Replays `scripts` with `workers` connections spread over `clients` processes."""
    ctx = mp.get_context("fork")
    queue = ctx.Value("l", 0)
    go = ctx.Event()
    out = ctx.Queue()
    clients = max(1, min(clients, workers))
    shares = [workers // clients + (1 if i < workers % clients else 0) for i in range(clients)]
    procs = [
        ctx.Process(
            target=_client_process, args=(port, scripts, queue, limits, share, go, out, obey)
        )
        for share in shares
    ]
    for p in procs:
        p.start()
    time.sleep(0.05)
    go.set()
    results: list[ClientResult] = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    latencies = [ns / 1e6 for r in results for ns in r.checkpoint_ns]
    started = min(r.started for r in results)  # perf_counter: one clock for every process
    timeline = sorted(
        (at / 1e9 - started, ns / 1e6)
        for r in results
        for at, ns in zip(r.checkpoint_at_ns, r.checkpoint_ns, strict=True)
    )
    outcomes: dict[str, RunOutcome] = {}
    for r in results:
        outcomes.update(r.outcomes)
    return PhaseResult(
        wall_s=max(r.ended for r in results) - started,
        client_cpu_s=sum(r.cpu_s for r in results),
        n_checkpoints=len(latencies),
        n_requests=sum(r.n_requests for r in results),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        outcomes=outcomes,
        errors=[e for r in results for e in r.errors],
        timeline=timeline,
    )


# --- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_bin() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def oracle_cmd() -> list[str]:
    venv = ROOT / ".venv" / "bin" / "oracle"
    if venv.exists():
        return [str(venv)]
    return [python_bin(), "-m", "oracle.cli"]


def server_env(database_url: str, policy: str = "median") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        # The shipped model decides only when the policy is oracle; else the median rule does.
        ORACLE_DEFAULT_MODEL="1" if policy == "oracle" else "0",
        ORACLE_TOKENS=TOKENS,
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("WEB_CONCURRENCY", None)
    return env


def wait_healthy(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> None:
    """Polls /healthz until it answers 200 (raw socket: no client library start-up in it)."""
    deadline = time.monotonic() + timeout_s
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(request)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no 200 on /healthz within {timeout_s} s")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float

    def pids(self) -> list[int]:
        """The uvicorn process and its children (the workers when --workers > 1)."""
        found = [self.proc.pid]
        for pid in list(found):
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                found += [int(c) for c in task.read_text().split()]
        return found

    def rss_mb(self) -> tuple[float, float]:
        """Total VmRSS and peak VmHWM of the serving processes, in MB."""
        rss = hwm = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":", 1)
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                )
                rss += int(fields["VmRSS"].split()[0]) / 1024
                hwm += int(fields["VmHWM"].split()[0]) / 1024
        return rss, hwm

    def cpu_s(self) -> float:
        """User + system CPU seconds the serving processes have used so far."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    cmd: list[str], database_url: str, port: int, log: Path, policy: str = "median"
) -> Server:
    with log.open("ab") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=server_env(database_url, policy),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_healthy(proc, port, CONNECT_TIMEOUT_S)
    except Exception:
        proc.kill()
        proc.wait()
        raise
    return Server(proc, port, time.perf_counter() - started)


def bench_server_cmd(port: int, server_workers: int) -> list[str]:
    """The bench app, started the way `oracle serve` starts uvicorn (same settings)."""
    return [
        python_bin(),
        "-m",
        "uvicorn",
        "bench.bare_app:create",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(server_workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


# --- databases ---------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(backend: str, pg_url: str, tmp: Path) -> Iterator[str]:
    """A new, migrated database; removed afterwards."""
    from core.schema import upgrade

    if backend == "sqlite":
        path = tmp / f"bench-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        upgrade(url)
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    from tests.scratch import postgres_database

    with postgres_database(pg_url, "oracle_bench") as url:
        yield url


# --- one measurement ---------------------------------------------------------------------------


@dataclass
class Trial:
    backend: str
    policy: str
    workers: int
    repeat: int
    startup_s: float
    real: PhaseResult
    bare: PhaseResult
    rss_mb: float
    hwm_mb: float
    quality: dict[str, float]
    loadavg: float
    fsync_ms: float


def fsync_ms(directory: Path, n: int = 20) -> float:
    """Median ms of a 4 KB write + fsync here; SQLite with synchronous=FULL pays one a commit."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return 1000 * statistics.median(times)


def warm_up(port: int) -> None:
    """A few requests of each kind, so that lazy imports and first-call costs are not timed."""
    points = tuple(
        {"epoch": e, "mqe": 1.0, "topographic_error": 0.1, "dead_neuron_ratio": 0.1, "wall_s": 0.1}
        for e in range(1, 11)
    )
    warm = RunData("bench-warmup", "bench-warmup", 10, {"x": 1}, points, {})
    for bare in (False, True):
        run_phase(port, scripts_for([warm], port, bare=bare), 1, 1)


@contextlib.contextmanager
def profiled(server: Server, directory: Path | None, name: str) -> Iterator[None]:
    """With --profile: py-spy samples the server's threads that hold the GIL during one phase,
    written as collapsed stacks (DIR/NAME.txt; flamegraph.pl or speedscope read them)."""
    if directory is None:
        yield
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    target = ["--pid", str(server.proc.pid), "--output", str(directory / f"{name}.txt")]
    recorder = subprocess.Popen(
        [spy, "record", "--gil", "--rate", "500", "--format", "raw", "--nonblocking", *target],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)  # attached before the phase starts
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        recorder.wait(timeout=30)


def trial(
    backend: str,
    workers: int,
    repeat: int,
    runs: Sequence[RunData],
    args: argparse.Namespace,
    tmp: Path,
    policy: str = "median",
) -> Trial:
    obey = not args.ignore_decisions
    with fresh_database(backend, args.postgres_url, tmp) as url:
        port = free_port()
        server = start_server(
            bench_server_cmd(port, args.server_workers), url, port, tmp / "server.log", policy
        )
        try:
            warm_up(port)
            load = os.getloadavg()[0]
            fsync = fsync_ms(tmp)
            cpu0 = server.cpu_s()
            name = f"{backend}-{policy}-{workers}-{repeat}"
            with profiled(server, args.profile, f"{name}-real"):
                real = run_phase(
                    port,
                    scripts_for(runs, port, bare=False, pace=args.pace),
                    workers,
                    args.clients,
                    obey=obey,
                )
            real.server_cpu_s = server.cpu_s() - cpu0
            limits = {rid: o.n_checkpoints for rid, o in real.outcomes.items()}
            limits.update({r.run_id: 0 for r in runs if r.run_id not in limits})
            cpu0 = server.cpu_s()
            with profiled(server, args.profile, f"{name}-bare"):
                bare = run_phase(
                    port,
                    scripts_for(runs, port, bare=True, pace=args.pace),
                    workers,
                    args.clients,
                    limits,
                )
            bare.server_cpu_s = server.cpu_s() - cpu0
            rss, hwm = server.rss_mb()
        finally:
            server.stop()
    return Trial(
        backend,
        policy,
        workers,
        repeat,
        server.startup_s,
        real,
        bare,
        rss,
        hwm,
        decision_quality(runs, real.outcomes),
        load,
        fsync,
    )


def startup_of_oracle_serve(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Seconds from spawning `oracle serve` to its first 200 on /healthz, and its idle RSS, as
    `make serve` starts it: with the shipped model."""
    times: list[float] = []
    fresh: list[float] = []
    rss: list[float] = []
    for _ in range(args.repeat):
        if backend == "sqlite":
            # An empty file: `oracle serve` migrates it first, and that is part of start-up.
            path = tmp / f"fresh-{uuid.uuid4().hex[:8]}.db"
            port = free_port()
            cmd = [*oracle_cmd(), "serve", "--host", "127.0.0.1", "--port", str(port)]
            server = start_server(cmd, f"sqlite:///{path}", port, tmp / "serve.log", "oracle")
            fresh.append(server.startup_s)
            server.stop()
        with fresh_database(backend, args.postgres_url, tmp) as url:
            port = free_port()
            cmd = [*oracle_cmd(), "serve", "--host", "127.0.0.1", "--port", str(port)]
            server = start_server(cmd, url, port, tmp / "serve.log", "oracle")
            times.append(server.startup_s)
            time.sleep(0.3)
            rss.append(server.rss_mb()[0])
            server.stop()
    out = {"startup_s": statistics.median(times), "idle_rss_mb": statistics.median(rss)}
    if fresh:
        out["startup_fresh_s"] = statistics.median(fresh)
    return out


# --- the report --------------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarize(trials: Sequence[Trial]) -> dict[str, Any]:
    """Medians over repeats of every figure of one (backend, workers) cell."""
    real = [t.real for t in trials]
    bare = [t.bare for t in trials]
    return {
        "backend": trials[0].backend,
        "policy": trials[0].policy,
        "workers": trials[0].workers,
        "repeats": len(trials),
        "decisions_per_s": med([r.decisions_per_s for r in real]),
        "p50_ms": med([r.p50_ms for r in real]),
        "p99_ms": med([r.p99_ms for r in real]),
        "bare_decisions_per_s": med([b.decisions_per_s for b in bare]),
        "bare_p50_ms": med([b.p50_ms for b in bare]),
        "bare_p99_ms": med([b.p99_ms for b in bare]),
        "throughput_ratio": med(
            [r.decisions_per_s / b.decisions_per_s for r, b in zip(real, bare, strict=True)]
        ),
        "requests_per_s": med([r.requests_per_s for r in real]),
        "bare_requests_per_s": med([b.requests_per_s for b in bare]),
        "client_us_per_request": med([r.client_us_per_request for r in real + bare]),
        "client_cpu_share": med([p.client_cpu_s / p.wall_s for p in real + bare]),
        "server_us_per_decision": med([r.server_us_per_decision for r in real]),
        "bare_server_us_per_decision": med([b.server_us_per_decision for b in bare]),
        "server_cpu_share": med([r.server_cpu_s / r.wall_s for r in real]),
        "loadavg": med([t.loadavg for t in trials]),
        "fsync_ms": med([t.fsync_ms for t in trials]),
        "rss_mb": med([t.rss_mb for t in trials]),
        "hwm_mb": med([t.hwm_mb for t in trials]),
        "startup_s": med([t.startup_s for t in trials]),
        "epochs_saved": med([t.quality["epochs_saved"] for t in trials]),
        "recall_best10": med([t.quality["recall_best10"] for t in trials]),
        "checkpoints": med([r.n_checkpoints for r in real]),
        "errors": sum(len(r.errors) + len(b.errors) for r, b in zip(real, bare, strict=True)),
        "spread_decisions_per_s": [round(r.decisions_per_s) for r in real],
        "spread_p99_ms": [round(r.p99_ms, 1) for r in real],
    }


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(
        "\n| backend | policy | workers | decisions/s | p50 ms | p99 ms | bare dec/s | bare p50 "
        "| bare p99 "
        "| ratio | server CPU µs/dec (bare) | RSS MB | client µs/req | load | fsync ms "
        "| saved | recall |"
    )
    print("|" + " --- |" * 17)
    for r in rows:
        print(
            f"| {r['backend']} | {r['policy']} | {r['workers']} | {r['decisions_per_s']:.0f} "
            f"| {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {r['bare_decisions_per_s']:.0f} | {r['bare_p50_ms']:.2f} "
            f"| {r['bare_p99_ms']:.2f} | {r['throughput_ratio']:.0%} "
            f"| {r['server_us_per_decision']:.0f} ({r['bare_server_us_per_decision']:.0f}) "
            f"| {r['rss_mb']:.0f} | {r['client_us_per_request']:.0f} | {r['loadavg']:.1f} "
            f"| {r['fsync_ms']:.1f} "
            f"| {r['epochs_saved']:.1%} | {r['recall_best10']:.1%} |"
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--workers", default="1,16,64", help="concurrent workers, comma-separated")
    parser.add_argument("--runs", type=int, default=600, help="runs to replay (of 600)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument("--quick", action="store_true", help="100 runs, 1 repeat")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival order")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn processes")
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument("--data", type=Path, default=DATA_FILE)
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    parser.add_argument(
        "--latency-log",
        type=Path,
        metavar="CSV",
        help="write every checkpoint request here: its trial, phase, when it was sent (seconds "
        "from the phase's start) and its latency (ms); bench/latency_windows.py reads it",
    )
    parser.add_argument("--no-startup", action="store_true", help="skip the `oracle serve` timing")
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="0: closed loop, each worker posts as soon as it is answered (throughput). "
        "F > 0: each worker waits the run's recorded training time (wall_s) divided by F "
        "before each checkpoint, as real workers do (latency at a realistic load)",
    )
    parser.add_argument(
        "--policy",
        default="median",
        help="who decides past warm-up: median (the median rule), oracle (the shipped model), "
        "or both, comma-separated: each repeat then runs them one after the other",
    )
    parser.add_argument(
        "--ignore-decisions",
        action="store_true",
        help="workers post every checkpoint whatever they are told, so that two policies "
        "serve the very same requests (saved/recall: where runs would have stopped)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the server with py-spy during each phase, into DIR/<backend>-<policy>-"
        "<workers>-<repeat>-<real|bare>.txt (sampling slows the server: not for the figures)",
    )
    args = parser.parse_args(argv)
    if args.pace < 0:
        parser.error(f"--pace must be 0 (closed loop) or positive, not {args.pace:g}")
    args.policies = args.policy.split(",")
    unknown = sorted(set(args.policies) - {"median", "oracle"})
    if unknown:
        parser.error(f"--policy: unknown {', '.join(map(repr, unknown))} (median or oracle)")
    if len(set(args.policies)) < len(args.policies):
        parser.error(f"--policy: {args.policy!r} names a policy twice")
    if args.latency_log is not None and not args.latency_log.parent.is_dir():
        parser.error(f"--latency-log: no folder {str(args.latency_log.parent)!r} to write it in")
    if args.quick:
        args.runs, args.repeat = 100, 1
    return args


LATENCY_LOG_COLUMNS = ("backend", "policy", "workers", "repeat", "phase", "sent_s", "latency_ms")


def log_latencies(path: Path, t: Trial) -> None:
    """Appends the trial's checkpoint requests to the --latency-log CSV."""
    with path.open("a", newline="") as sink:
        out = csv.writer(sink)
        for phase, result in (("real", t.real), ("bare", t.bare)):
            for sent, latency in result.timeline:
                row = (t.backend, t.policy, t.workers, t.repeat, phase)
                out.writerow((*row, f"{sent:.6f}", f"{latency:.3f}"))


def report(t: Trial) -> None:
    """One trial's line, printed as it ends."""
    print(
        f"{t.backend} {t.policy} workers={t.workers} #{t.repeat}: "
        f"{t.real.decisions_per_s:.0f} dec/s p50 {t.real.p50_ms:.2f} "
        f"p99 {t.real.p99_ms:.2f} ms | bare {t.bare.decisions_per_s:.0f} dec/s "
        f"p99 {t.bare.p99_ms:.2f} ms | RSS {t.rss_mb:.0f} MB | start "
        f"{t.startup_s:.2f} s | server CPU {t.real.server_us_per_decision:.0f}/"
        f"{t.bare.server_us_per_decision:.0f} µs/dec | load {t.loadavg:.1f} "
        f"fsync {t.fsync_ms:.1f} ms | client {t.real.client_us_per_request:.0f} "
        f"µs/req | saved {t.quality['epochs_saved']:.1%} recall "
        f"{t.quality['recall_best10']:.1%} | errors "
        f"{len(t.real.errors) + len(t.bare.errors)}",
        flush=True,
    )
    for error in (t.real.errors + t.bare.errors)[:5]:
        print("   ", error, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    worker_counts = [int(w) for w in args.workers.split(",")]
    runs = load_runs(args.data, args.runs, args.seed)
    print(
        f"{len(runs)} runs, {sum(len(r.checkpoints) for r in runs)} checkpoints planned; "
        f"backends {backends}, workers {worker_counts}, {args.repeat} repeats, "
        f"{args.server_workers} server process(es), {args.clients} client process(es), "
        f"{os.cpu_count()} CPUs, "
        + (f"paced: recorded training time / {args.pace:g}" if args.pace else "closed loop"),
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="oracle-bench-"))
    if args.latency_log:
        args.latency_log.write_text(",".join(LATENCY_LOG_COLUMNS) + "\n")
    rows: list[dict[str, Any]] = []
    startup: dict[str, dict[str, float]] = {}
    try:
        for backend in backends:
            if not args.no_startup:
                startup[backend] = startup_of_oracle_serve(backend, args, tmp)
                print(f"{backend}: oracle serve {startup[backend]}", flush=True)
            for workers in worker_counts:
                trials: dict[str, list[Trial]] = {policy: [] for policy in args.policies}
                # Policies alternate within a repeat: a box whose speed drifts hits each alike.
                for repeat, policy in itertools.product(range(args.repeat), args.policies):
                    t = trial(backend, workers, repeat, runs, args, tmp, policy)
                    trials[policy].append(t)
                    report(t)
                    if args.latency_log:
                        log_latencies(args.latency_log, t)
                rows.extend(summarize(t) for t in trials.values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows)
    for backend, figures in startup.items():
        print(f"\n`oracle serve` on {backend}: {json.dumps(figures)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rows": rows,
                    "startup": startup,
                },
                indent=2,
            )
        )
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
