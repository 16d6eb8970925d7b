"""The SQLite writer engine's transactions: BEGIN IMMEDIATE, and the event loop's no-wait try."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from core.db import begin_nowait, make_engine

BUSY_TIMEOUT_MS = 2_000


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url, writer=True, busy_timeout_ms=BUSY_TIMEOUT_MS)
    yield engine
    engine.dispose()


def _other_writer(sqlite_url: str, engine: Engine) -> sqlite3.Connection:
    """Another process's connection holding the write lock. The engine's pooled connection is
    made first: a new one's set-up (WAL, pragmas) waits for the lock too."""
    engine.connect().close()
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def _busy_timeout(conn: Connection) -> int:
    """On the driver: through SQLAlchemy, the PRAGMA would begin a transaction first."""
    driver = conn.connection.driver_connection
    assert driver is not None
    return int(driver.execute("PRAGMA busy_timeout").fetchone()[0])


def test_begin_nowait_takes_the_write_lock_when_it_is_free(engine: Engine, sqlite_url: str) -> None:
    with engine.connect() as conn:
        assert begin_nowait(conn)
        assert conn.in_transaction()
        conn.execute(text("UPDATE studies SET description = 'x'"))  # a write: lock held
        assert _busy_timeout(conn) == BUSY_TIMEOUT_MS  # restored for the statements
        # another writer now waits for ours (and gives up after its own timeout)
        other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
        conn.commit()


def test_begin_nowait_gives_up_at_once_when_another_writer_holds_the_lock(
    engine: Engine, sqlite_url: str
) -> None:
    other = _other_writer(sqlite_url, engine)
    try:
        with engine.connect() as conn:
            started = time.perf_counter()
            assert not begin_nowait(conn)
            assert time.perf_counter() - started < BUSY_TIMEOUT_MS / 1000 / 4
        # a new connection waits for the lock as usual (the busy timeout was restored)
        with engine.connect() as conn:
            assert _busy_timeout(conn) == BUSY_TIMEOUT_MS
            started = time.perf_counter()
            with pytest.raises(OperationalError, match="locked"):
                conn.begin()
            waited = time.perf_counter() - started
            assert waited >= BUSY_TIMEOUT_MS / 1000 * 0.9
    finally:
        other.close()
    with engine.connect() as conn:  # free again
        assert begin_nowait(conn)
        conn.rollback()


def test_a_failed_begin_is_wrapped_as_sqlalchemy_wraps_a_statement(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    sqlite3.connect(path).close()
    engine = make_engine(f"sqlite:///{path}", writer=True, busy_timeout_ms=50)
    other = _other_writer(f"sqlite:///{path}", engine)
    try:
        with engine.connect() as conn, pytest.raises(OperationalError, match="BEGIN IMMEDIATE"):
            conn.begin()
    finally:
        other.close()
        engine.dispose()
