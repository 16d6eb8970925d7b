"""A real `oracle serve` on a temporary SQLite file and a free loopback port, for examples and
benchmarks that need an Oracle of their own: started as a subprocess, ready at /readyz."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def oracle_command() -> list[str]:
    """The `oracle` command of this interpreter's environment (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("oracle")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("oracle")
    return [found] if found else [sys.executable, "-m", "oracle.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_oracle(
    workdir: Path | None = None, *, refresh_s: float = 0.0, timeout_s: float = 60.0
) -> Iterator[str]:
    """Serve an empty Oracle (the shipped model active, no tokens: loopback only) and yield
    its URL; stop it afterwards.

    `refresh_s` is ORACLE_REFERENCE_REFRESH_S: 0 makes every finished run count at the next
    decision, as every finished trial does for an Optuna pruner (the service's default, 1 s,
    lets a decision see a study up to a second old).
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oracle-")))
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{workdir / 'oracle.db'}",
            "ORACLE_REFERENCE_REFRESH_S": str(refresh_s),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        env.pop("ORACLE_TOKENS", None)
        env.pop("ORACLE_TOKENS_FILE", None)
        log = stack.enter_context((workdir / "oracle.log").open("wb"))
        process = subprocess.Popen(
            [*oracle_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, process, workdir / "oracle.log", timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"oracle serve exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"oracle serve was not ready in {timeout_s} s:\n{log.read_text()}")
