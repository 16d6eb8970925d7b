"""What one API process holds: database, tokens, reference sets, the model holder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from oracle.core.db import Database
from oracle.core.errors import StorageUnavailable
from oracle.service import metrics
from oracle.service.auth import TokenTable
from oracle.service.reference_cache import ReferenceCache
from oracle.service.serving.holder import ModelHolder
from oracle.service.settings import Settings


@dataclass
class AppState:
    settings: Settings
    db: Database
    tokens: TokenTable
    references: ReferenceCache
    models: ModelHolder

    def writing(self) -> AbstractContextManager[Session]:
        return _transaction(self.db.writes)

    def reading(self) -> AbstractContextManager[Session]:
        return _transaction(self.db.reads)


@contextmanager
def _transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error; storage faults become 503."""
    try:
        with factory.begin() as session:
            yield session
    except (OperationalError, PoolTimeout) as e:
        metrics.STORAGE_ERRORS.inc()
        raise StorageUnavailable(f"the database is unavailable: {_first_line(e)}") from e
    except DBAPIError as e:
        if e.connection_invalidated:
            metrics.STORAGE_ERRORS.inc()
            raise StorageUnavailable(f"the database connection was lost: {_first_line(e)}") from e
        raise


def _first_line(error: Exception) -> str:
    orig = getattr(error, "orig", None) or error
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.oracle
    return state
