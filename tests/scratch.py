"""A scratch Postgres database: created, migrated (unless asked not to), dropped. For tests and
benchmarks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.db import normalize_url
from core.schema import upgrade


@contextmanager
def postgres_database(server_url: str, prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A new database on the server of `server_url`, at the schema's head (or empty, without
    `migrate`), dropped afterwards."""
    base = normalize_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    # pre-ping: a test that restarts the server (tests/faults) must not leave this engine
    # holding a dead connection for the DROP at the end.
    admin = create_engine(base, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        if migrate:
            upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
