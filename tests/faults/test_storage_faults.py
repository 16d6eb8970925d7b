"""A SQLite database that cannot be written — the file made read-only, the disk full — is a
clear 503 with Retry-After and a log line that says why; the process stays up and recovers
as soon as the condition is gone."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import auth
from tests.load.harness import Server, metrics_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RUN = {"study_id": "faults", "max_epochs": 10_000}


def _point(epoch: int) -> dict[str, float | int]:
    return {"epoch": epoch, **metrics_at(epoch, 1)}


def _post(server: Server, epoch: int) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/runs/r1/checkpoints",
        json=_point(epoch),
        headers=auth("worker"),
        timeout=15,
    )


def _serve(url: str, log: Path) -> Server:
    server = Server(url, log).start()
    response = httpx.put(f"{server.url}/v1/runs/r1", json=RUN, headers=auth("worker"))
    assert response.status_code == 201, response.text
    assert _post(server, 1).status_code == 200
    return server


def _assert_clear_503(server: Server, response: httpx.Response, words: tuple[str, ...]) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    detail = response.json()["detail"]
    assert any(w in detail for w in words), detail
    assert server.alive
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    log = server.tail(10**6)
    assert "storage_unavailable" in log and any(w in log for w in words)


@pytest.fixture
def immutable_files() -> Iterator[list[Path]]:
    """Files to make immutable (chattr +i: read-only even for root); always undone."""
    files: list[Path] = []
    yield files
    for path in files:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_read_only_database_file_is_503_then_recovers(
    sqlite_url: str, tmp_path: Path, immutable_files: list[Path]
) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is needed to make a file read-only for root")
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    server = _serve(sqlite_url, tmp_path / "server.log")
    try:
        for path in (db, db.with_name(db.name + "-wal")):
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"chattr +i is not supported here: {done.stderr.decode()}")
            immutable_files.append(path)
        refused = _post(server, 2)
        _assert_clear_503(server, refused, ("read-only", "readonly"))
        again = _post(server, 2)  # no crash loop: the same clear answer, the process stays
        assert again.status_code == 503
        for path in immutable_files:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        assert _post(server, 2).status_code == 200
        assert _post(server, 3).status_code == 200
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode is not None


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a disk that really fills up. Needs root (mount)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_is_503_then_recovers(
    tiny_disk: Path, sqlite_template: Path, tmp_path: Path
) -> None:
    db = tiny_disk / "oracle.db"
    shutil.copy(sqlite_template, db)
    server = _serve(f"sqlite:///{db}", tmp_path / "server.log")
    filler = tiny_disk / "filler"
    try:
        with filler.open("wb") as sink:  # fill every free byte
            try:
                while True:
                    sink.write(b"\0" * 65536)
                    sink.flush()
            except OSError:
                pass
        statuses = []
        epoch = 2
        for epoch in range(2, 400):  # the WAL may have room left for a few commits
            response = _post(server, epoch)
            statuses.append(response.status_code)
            if response.status_code != 200:
                break
        assert statuses[-1] == 503, statuses
        _assert_clear_503(server, response, ("full",))
        filler.unlink()
        assert _post(server, epoch).status_code == 200  # the same epoch, now stored
    finally:
        server.stop()
