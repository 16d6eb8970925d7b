"""What a database fault means to a client: StorageUnavailable (503, retry later), with the
cause an operator should look at."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.errors import StorageUnavailable
from service import metrics


@contextmanager
def storage_errors() -> Iterator[None]:
    """Database faults (unreachable, locked, read-only, full) become StorageUnavailable."""
    try:
        yield
    except (OperationalError, PoolTimeout) as e:
        metrics.STORAGE_ERRORS.inc()
        raise StorageUnavailable(f"the database is unavailable: {_first_line(e)}") from e
    except DBAPIError as e:
        if e.connection_invalidated:
            metrics.STORAGE_ERRORS.inc()
            raise StorageUnavailable(f"the database connection was lost: {_first_line(e)}") from e
        raise


# What an operator should look at, by SQLite's primary result code (the driver's messages,
# such as "disk I/O error", do not say that the file or the disk is the problem).
_SQLITE_CAUSES = {
    "SQLITE_READONLY": "the database file is read-only: check its permissions and its mount",
    "SQLITE_FULL": "the disk holding the database is full",
    "SQLITE_IOERR": "the database file could not be written: read-only, or a failing disk?",
    "SQLITE_CANTOPEN": "the database file cannot be opened: check the path and permissions",
    "SQLITE_BUSY": "another writer held the database lock longer than the busy timeout",
}


def _first_line(error: Exception) -> str:
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    code = getattr(orig, "sqlite_errorname", None)
    if isinstance(code, str):
        primary = next((k for k in _SQLITE_CAUSES if code == k or code.startswith(k + "_")), None)
        cause = _SQLITE_CAUSES.get(primary or "")
        if cause is not None:
            return f"{text} ({code}: {cause})"
    return text
