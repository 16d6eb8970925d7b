"""Engines and session factories for SQLite (WAL) and Postgres."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DATABASE_URL = "sqlite:///./var/oracle.db"


def normalize_url(url: str) -> str:
    """Accept the plain `postgresql://` spelling that every tool prints and use psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def _configure_sqlite(
    engine: Engine, *, immediate: bool, busy_timeout_ms: int, foreign_keys: bool
) -> None:
    # pysqlite's own transaction handling is off, so that we emit BEGIN ourselves: a writer
    # must take the write lock at BEGIN (IMMEDIATE), or a read-then-write transaction in WAL
    # fails with "database is locked" at once when another process wrote in between, and
    # busy_timeout never gets the chance to wait.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # FULL: a commit is on disk before the worker hears its decision (WAL + NORMAL can
        # lose the last transactions on power loss, which would break "nothing acknowledged
        # is ever lost").
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    # On the driver (`_on_driver`), not through SQLAlchemy.
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not conn.get_execution_options().get(NOWAIT, False):
            _on_driver(conn, begin)
            return
        _on_driver(conn, "PRAGMA busy_timeout=0")
        try:
            _on_driver(conn, begin)
        except DBAPIError as e:
            code = getattr(e.orig, "sqlite_errorcode", None)
            if code is not None and code & 0xFF == sqlite3.SQLITE_BUSY:  # and extended codes
                raise LockBusy("another connection holds the write lock") from e
            raise
        finally:
            _on_driver(conn, f"PRAGMA busy_timeout={int(busy_timeout_ms)}")


# An execution option of a SQLite writer's Connection: its BEGIN IMMEDIATE fails at once with
# LockBusy, instead of waiting up to the busy timeout, when another connection holds the write
# lock (see `begin_nowait`).
NOWAIT = "oracle_sqlite_nowait"


class LockBusy(Exception):
    """BEGIN IMMEDIATE would have waited for another connection's write lock."""


def begin_nowait(conn: Connection) -> bool:
    """Begin `conn`'s transaction (a SQLite writer's: BEGIN IMMEDIATE) if that takes no wait;
    False if another connection holds the write lock, and then `conn` is unusable: close it.

    For a caller that must not block (an event loop), and waits elsewhere when this fails.
    """
    conn.execution_options(**{NOWAIT: True})
    try:
        conn.begin()
    except LockBusy:
        return False
    finally:
        conn.execution_options(**{NOWAIT: False})
    return True


def _on_driver(conn: Connection, sql: str) -> None:
    """Run `sql` (BEGIN, a PRAGMA: no parameters, no rows) on `conn`'s DBAPI connection:
    through SQLAlchemy's execution context a BEGIN cost ~45 µs more, on every transaction of
    the writer. The driver's errors are wrapped as SQLAlchemy wraps them, so that
    `storage_errors` and `begin_nowait` see the same exceptions either way."""
    driver = conn.connection.driver_connection
    assert driver is not None  # the connection is checked out
    try:
        driver.execute(sql).close()
    except conn.dialect.loaded_dbapi.Error as e:
        raise DBAPIError.instance(
            sql, (), e, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
        ) from e


def make_engine(
    url: str,
    *,
    writer: bool = True,
    busy_timeout_ms: int = 10_000,
    pool_size: int = 5,
    pre_ping: bool = True,
    foreign_keys: bool = True,
) -> Engine:
    """An engine for `url`. For SQLite, `writer` engines take the write lock at BEGIN, and
    `foreign_keys` are enforced unless turned off (for migrations). `pre_ping` (Postgres): test
    each connection taken from the pool with a round trip."""
    url = normalize_url(url)
    if is_sqlite(url):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=False,
        )
        _configure_sqlite(
            engine, immediate=writer, busy_timeout_ms=busy_timeout_ms, foreign_keys=foreign_keys
        )
        return engine
    return create_engine(url, pool_pre_ping=pre_ping, **_postgres_pool(pool_size))


def _postgres_pool(pool_size: int) -> dict[str, Any]:
    return {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_timeout": 5,
        # A request must fail fast with 503 while Postgres is down, not hang.
        "connect_args": {"connect_timeout": 3},
    }


@dataclass(frozen=True)
class Database:
    """The engines of one process: one for the writer, one for reads; and, for Postgres in
    the service, an asyncio engine on which the writer awaits its batches (see Recorder)."""

    url: str
    write_engine: Engine
    read_engine: Engine
    writes: sessionmaker[Session]
    reads: sessionmaker[Session]
    async_write_engine: AsyncEngine | None = None
    async_writes: async_sessionmaker[AsyncSession] | None = None

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 5, async_writes: bool = False) -> Database:
        """`async_writes`: also an asyncio writer engine (Postgres only; call from the event
        loop that will use it, and close with `aclose`)."""
        url = normalize_url(url)
        async_engine = None
        if is_sqlite(url):
            write_engine = make_engine(url, writer=True, pool_size=pool_size)
            read_engine = make_engine(url, writer=False, pool_size=pool_size)
        else:
            # The writer takes a connection per batch; a pre-ping was one round trip of about
            # seven per batch. Without it, the first batch after a Postgres restart fails (503,
            # which clients retry) and invalidates the pool, and the next one reconnects.
            write_engine = make_engine(url, pool_size=pool_size, pre_ping=False)
            read_engine = make_engine(url, pool_size=pool_size)
            if async_writes:
                async_engine = create_async_engine(url, **_postgres_pool(pool_size))
        return cls(
            url=url,
            write_engine=write_engine,
            read_engine=read_engine,
            writes=sessionmaker(write_engine, expire_on_commit=False),
            reads=sessionmaker(read_engine, expire_on_commit=False),
            async_write_engine=async_engine,
            async_writes=(
                async_sessionmaker(async_engine, expire_on_commit=False)
                if async_engine is not None
                else None
            ),
        )

    @property
    def backend(self) -> str:
        return self.write_engine.dialect.name

    def dispose(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()

    async def aclose(self) -> None:
        """`dispose`, and the asyncio engine's connections (on the loop that opened them)."""
        if self.async_write_engine is not None:
            await self.async_write_engine.dispose()
        self.dispose()


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)
