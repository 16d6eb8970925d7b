"""Real databases for every test: a SQLite file always, and Postgres when TEST_POSTGRES_URL is set.

The schema comes from `alembic upgrade head`, so every run exercises the migrations.
CI sets REQUIRE_POSTGRES=1: a missing Postgres is then a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from core.datafile import read_bytes
from core.db import normalize_url
from core.schema import alembic_config, upgrade
from service.main import create_app
from service.settings import Settings
from tests.scratch import postgres_database

REPO = Path(__file__).resolve().parents[1]
# The project's own copy of the 600 real MiniSom runs (data/README.md), gzip-compressed.
DATA_FILE = REPO / "data" / "minisom_runs.jsonl.gz"
TOKENS = {"worker": "worker-secret", "admin": "admin-secret", "reader": "reader-secret"}
TABLES = ("checkpoints", "runs", "studies", "aliases", "model_versions")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("REQUIRE_POSTGRES") == "1" and not os.environ.get("TEST_POSTGRES_URL"):
        raise pytest.UsageError("REQUIRE_POSTGRES=1 but TEST_POSTGRES_URL is not set")


@pytest.fixture(scope="session")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 600 MiniSom runs as a plain JSON-lines file, as most users' exports are (the
    compressed original is read directly by the tests of the readers)."""
    if not DATA_FILE.exists():
        pytest.fail(f"the data file is missing: {DATA_FILE}")
    path = tmp_path_factory.mktemp("data") / "minisom_runs.jsonl"
    path.write_bytes(read_bytes(DATA_FILE))
    return path


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "oracle.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh, migrated Postgres database for this test session, dropped afterwards."""
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TEST_POSTGRES_URL is not set")
    with postgres_database(base, "oracle_test") as url:
        yield url


def _truncate(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "oracle.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_server_url")
        _truncate(url)
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema: a SQLite file not created yet, or a new Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/not-yet/oracle.db"
        return
    server = os.environ.get("TEST_POSTGRES_URL")
    if not server:
        pytest.skip("TEST_POSTGRES_URL is not set")
    with postgres_database(server, "oracle_empty", migrate=False) as url:
        yield url


def alembic_versions(url: str) -> list[str]:
    """The rows of the database's alembic_version: one, the revision its schema is at."""
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def set_alembic_version(url: str, version: str | None) -> None:
    """Moves the schema's recorded revision: None downgrades it to base (no tables), a name
    the code does not know makes it look migrated by a newer Oracle."""
    if version is None:
        from alembic import command

        command.downgrade(alembic_config(url), "base")
        return
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": version})
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "oracle.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def settings_for(url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": url,
        "tokens": ",".join(f"{role}:{token}" for role, token in TOKENS.items()),
        "log_format": "console",
        "log_level": "warning",
        "reference_refresh_s": 0.0,
        "model_poll_s": 0.2,
        # Tests of the fallback policies need no model; model tests activate their own.
        "default_model": False,
        "gc_freeze": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@pytest.fixture
def app_settings(database_url: str) -> Settings:
    return settings_for(database_url)


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    """The API through HTTP, lifespan included, with a worker token."""
    with TestClient(create_app(app_settings), headers=auth("worker")) as c:
        yield c


@pytest.fixture
def admin(client: TestClient) -> TestClient:
    """The same app with an admin token (shares the client's lifespan)."""
    client.headers.update(auth("admin"))
    return client


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def oracle_bin() -> str:
    found = shutil.which("oracle")
    venv = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "oracle"
    return str(venv) if venv.exists() else (found or "oracle")
