"""The real Oracle service as a child process that a test can stop and start again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER_TOKEN = "worker-secret"


class ServiceProcess:
    """`python -m oracle.cli serve` on one port and one database, across restarts."""

    def __init__(self, port: int, database_url: str, workdir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / "service.log"
        self._workdir = workdir
        self._env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "ORACLE_TOKENS": f"worker:{WORKER_TOKEN},admin:admin-secret",
            # the checkout, whether or not the package is installed in this interpreter
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._proc is None, "already running"
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "oracle.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=self._workdir,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self._proc.returncode}):\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the service was not ready in {timeout} s:\n{self.logs()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no graceful shutdown to lean on."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def running(workdir: Path) -> Iterator[ServiceProcess]:
    """A started, ready service on a free port with a SQLite file in `workdir`; killed after."""
    process = ServiceProcess(free_port(), f"sqlite:///{workdir / 'oracle.db'}", workdir)
    process.start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.kill()
