"""The tables in code and the schema that the migrations build must agree, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.db import normalize_url
from core.schema import alembic_config
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
