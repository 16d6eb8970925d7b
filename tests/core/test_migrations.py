"""The tables in code and the schema that the migrations build must agree, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.db import alembic_config, normalize_url
from core.tables import Base


def test_migrations_match_the_tables(database_url: str) -> None:
    engine = create_engine(normalize_url(database_url))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"the migrations and core.tables disagree: {diff}"


def test_migrations_downgrade_and_upgrade_again(tmp_path: object) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path}/m.db"
    config = alembic_config(url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    command.upgrade(config, "head")
    engine = create_engine(url)
    assert {"studies", "runs", "checkpoints", "model_versions", "aliases"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_migrations_head_constant_is_the_newest_revision(tmp_path: object) -> None:
    from alembic.script import ScriptDirectory

    from core.db import ensure_migrated
    from migrations import HEAD

    url = f"sqlite:///{tmp_path}/fresh/var/h.db"  # a folder that does not exist yet
    assert ScriptDirectory.from_config(alembic_config(url)).get_current_head() == HEAD
    ensure_migrated(url)  # an empty file is migrated
    engine = create_engine(url)
    assert "runs" in inspect(engine).get_table_names()
    engine.dispose()
    ensure_migrated(url)  # and a migrated one is left alone
