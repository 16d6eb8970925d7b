"""What one API process holds: database, tokens, reference sets, the model holder, the writer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from core.db import Database
from service.auth import TokenTable
from service.recorder import Recorder
from service.reference_cache import ReferenceCache
from service.serving.holder import ModelHolder
from service.settings import Settings
from service.storage import storage_errors

T = TypeVar("T")


@dataclass
class AppState:
    settings: Settings
    db: Database
    tokens: TokenTable
    references: ReferenceCache
    models: ModelHolder
    recorder: Recorder

    async def write(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one write transaction, in a batch of the process's single writer."""
        return await self.recorder.write(work)

    def reading(self) -> AbstractContextManager[Session]:
        return _transaction(self.db.reads)


@contextmanager
def _transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error; storage faults become 503."""
    with storage_errors(), factory.begin() as session:
        yield session


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.oracle
    return state
