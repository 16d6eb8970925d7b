"""core.schema: where a database's schema is, bringing it to head under the migration lock, and
the refusals (behind with migrating off; ahead of the code), on a real SQLite file and on a
fresh Postgres database."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from core import schema
from core.db import normalize_url
from core.errors import SchemaMismatch
from migrations import HEAD
from tests.conftest import REPO, alembic_versions, set_alembic_version

UNKNOWN = "9999_from_a_newer_oracle"


def test_schema_head_constant_is_the_newest_revision() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(schema.alembic_config("sqlite://"))
    assert scripts.get_current_head() == HEAD
    assert HEAD in schema.known_revisions()


def test_schema_prepare_migrates_an_empty_database_and_leaves_one_at_head(
    empty_database_url: str,
) -> None:
    assert schema.revision(empty_database_url) == schema.Revision(None, known=True)
    assert schema.prepare(empty_database_url, migrate=True).at_head
    assert alembic_versions(empty_database_url) == [HEAD]
    engine = create_engine(normalize_url(empty_database_url))
    assert {"studies", "runs", "checkpoints", "model_versions", "aliases"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()
    assert schema.prepare(empty_database_url, migrate=True).at_head  # at head: nothing to do
    assert schema.prepare(empty_database_url, migrate=False).at_head
    assert alembic_versions(empty_database_url) == [HEAD]


def test_schema_prepare_without_migrating_refuses_a_schema_behind_and_names_the_command(
    empty_database_url: str,
) -> None:
    with pytest.raises(SchemaMismatch, match=r"no schema yet.*`oracle migrate`"):
        schema.prepare(empty_database_url, migrate=False)
    if empty_database_url.startswith("sqlite"):  # the check did not create the file
        assert not Path(empty_database_url.removeprefix("sqlite:///")).exists()
    schema.upgrade(empty_database_url)
    set_alembic_version(empty_database_url, None)  # downgraded: behind again
    with pytest.raises(SchemaMismatch, match=r"`oracle migrate`.*ORACLE_MIGRATE_ON_START"):
        schema.prepare(empty_database_url, migrate=False)
    assert schema.prepare(empty_database_url, migrate=True).at_head


def test_schema_ahead_of_the_code_is_refused_migrating_or_not(empty_database_url: str) -> None:
    schema.upgrade(empty_database_url)
    set_alembic_version(empty_database_url, UNKNOWN)
    found = schema.revision(empty_database_url)
    assert found == schema.Revision(UNKNOWN, known=False) and not found.at_head
    for migrate in (True, False):
        with pytest.raises(SchemaMismatch, match=rf"{UNKNOWN}.*ahead of the code"):
            schema.prepare(empty_database_url, migrate=migrate)
    with pytest.raises(SchemaMismatch, match="ahead"):
        schema.upgrade(empty_database_url)
    assert alembic_versions(empty_database_url) == [UNKNOWN]  # left as it was


def test_schema_upgrades_started_together_migrate_once(empty_database_url: str) -> None:
    """Six migrator processes at once on an empty database (Alembic's context is global to
    a process, so processes, as replicas are): one builds the schema under the lock, the others
    wait for it and then find it at head; none fails."""
    code = "import sys; from core.schema import upgrade; upgrade(sys.argv[1])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_database_url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outputs
    assert alembic_versions(empty_database_url) == [HEAD]


def test_schema_upgrade_waits_for_a_migrator_holding_the_lock(empty_database_url: str) -> None:
    """The lock is real: while another connection holds it, upgrade waits; then it goes on."""
    schema.upgrade(empty_database_url)
    set_alembic_version(empty_database_url, None)
    engine = create_engine(normalize_url(empty_database_url))
    holder = engine.connect()
    if holder.dialect.name == "postgresql":
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": schema.MIGRATION_LOCK_KEY})
    else:
        holder.exec_driver_sql("BEGIN IMMEDIATE")
    done = threading.Event()
    worker = threading.Thread(target=lambda: (schema.upgrade(empty_database_url), done.set()))
    worker.start()
    try:
        assert not done.wait(1.0)  # waiting for the holder
    finally:
        if holder.dialect.name == "postgresql":
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": schema.MIGRATION_LOCK_KEY})
            holder.commit()
        else:
            holder.exec_driver_sql("ROLLBACK")
        holder.close()
        engine.dispose()
    worker.join(timeout=60)
    assert done.is_set()
    assert alembic_versions(empty_database_url) == [HEAD]
