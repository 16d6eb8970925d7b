"""The schema's revision in a database against this code's migrations, and bringing it to head
with one migrator at a time (Postgres: an advisory lock; SQLite: its write lock), however many
processes start together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, inspect, select, text

from core.db import is_sqlite, make_engine, normalize_url, sqlite_file
from core.errors import SchemaMismatch
from migrations import HEAD

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# The key of the advisory lock that migrations hold on Postgres: any fixed number that nothing
# else on the server locks; this one is "oracle" in ASCII.
MIGRATION_LOCK_KEY = 0x6F7261636C65
# How long a second process waits for the first one's migration (SQLite's busy timeout).
MIGRATION_WAIT_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class Revision:
    """Where a database's schema is: `current` (None: it has none yet) against this code's
    HEAD; `known`, whether this code's migrations know `current` (not: the database is ahead)."""

    current: str | None
    known: bool

    @classmethod
    def of(cls, current: str | None) -> Revision:
        """`current` against this code's migrations (loads Alembic unless it is HEAD)."""
        return cls(current, current is None or current == HEAD or current in known_revisions())

    @property
    def at_head(self) -> bool:
        return self.current == HEAD

    def describe(self) -> str:
        if self.current is None:
            return f"the database has no schema yet (this code's head is {HEAD})"
        if self.at_head:
            return f"the schema is at revision {self.current} (head)"
        if not self.known:
            return (
                f"the schema is at revision {self.current}, which this code does not know "
                f"(its head is {HEAD}): the database is ahead of the code"
            )
        return f"the schema is at revision {self.current}, behind this code's head {HEAD}"


def revision_of(conn: Connection) -> str | None:
    """The revision the database's schema is at; None for a database without one."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if version is None else str(version)


def known_revisions() -> set[str]:
    """Every revision this code's migrations know (loads Alembic: ~0.5 s the first time)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {script.revision for script in scripts.walk_revisions()}


def revision(url: str) -> Revision:
    """Where the schema of the database at `url` is."""
    path = sqlite_file(normalize_url(url)) if is_sqlite(url) else None
    if path is not None and not path.exists():
        return Revision(None, True)  # not created yet: no engine, which would create it
    engine = make_engine(url, writer=False, pool_size=1)
    try:
        with engine.connect() as conn:
            return Revision.of(revision_of(conn))
    finally:
        engine.dispose()


def prepare(url: str, *, migrate: bool) -> Revision:
    """What `oracle serve` does first: bring the database to head (`migrate`), or check that
    it is there. SchemaMismatch, with one line naming what to do, when the schema is ahead of
    the code, or behind it and `migrate` is off. At head it costs one query."""
    found = revision(url)
    if found.at_head:
        return found
    if not found.known:
        raise SchemaMismatch(_ahead(found))
    if not migrate:
        raise SchemaMismatch(
            f"{found.describe()}; run `oracle migrate` on this database, or serve with "
            "ORACLE_MIGRATE_ON_START=1 to migrate it at start"
        )
    return upgrade(url)


def upgrade(url: str, target: str = "head") -> Revision:
    """`alembic upgrade` on `url` (the only way the schema comes into a database), in one
    transaction that holds the migration lock: a process that comes second waits for the
    first, then finds the schema at head and changes nothing. A database ahead of the code
    is refused (SchemaMismatch), not "migrated"."""
    from alembic import command

    url = normalize_url(url)
    engine = _migration_engine(url)
    try:
        with engine.connect() as conn, conn.begin():  # SQLite: BEGIN IMMEDIATE, the write lock
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            found = Revision.of(revision_of(conn))  # read under the lock
            if not found.known:
                raise SchemaMismatch(_ahead(found))
            config = alembic_config(url)
            config.attributes["connection"] = conn  # migrations/env.py runs in this transaction
            command.upgrade(config, target)
            return Revision.of(revision_of(conn))
    finally:
        engine.dispose()


def _ahead(found: Revision) -> str:
    return (
        f"{found.describe()}; serve it with the version of the Oracle that migrated it, "
        f"or downgrade it with that version's `alembic downgrade {HEAD}`"
    )


def _migration_engine(url: str) -> Engine:
    if is_sqlite(url):
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Foreign keys off, as Alembic expects: its batch mode rebuilds a table by copying it
        # and dropping the old one, which with them on would cascade into the child tables.
        return make_engine(
            url, writer=True, busy_timeout_ms=MIGRATION_WAIT_MS, pool_size=1, foreign_keys=False
        )
    return make_engine(url, pool_size=1)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config
