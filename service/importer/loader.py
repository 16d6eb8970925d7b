"""Storing imported runs through the store, as the API would, in batched transactions.

Each run is created, given its checkpoints (each with an 'import' decision row) and finished:
completed if it reached max_epochs (it then joins its study's reference set), else stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.orm import Session

from core import store
from core.datafile import uncompressed_size
from core.db import Database
from core.errors import Conflict
from core.tables import Run, utcnow
from service.importer.records import ImportedCheckpoint, ImportedRun
from service.importer.sources import expand, read

BATCH_SIZE = 200
IMPORT_POLICY = "import"
IMPORT_REASON = "imported history"


@dataclass
class ImportSummary:
    """What an import did: counted only once the transaction that stored it committed."""

    files: int = 0
    runs_loaded: int = 0
    runs_skipped: int = 0
    checkpoints_loaded: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_study: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        statuses = ", ".join(f"{n} {status}" for status, n in sorted(self.by_status.items()))
        lines = [
            f"loaded {self.runs_loaded} run{_s(self.runs_loaded)}"
            + (f" ({statuses})" if statuses else "")
            + f" with {self.checkpoints_loaded} checkpoint{_s(self.checkpoints_loaded)}"
            + f" from {self.files} file{_s(self.files)} in {self.seconds:.1f} s",
        ]
        if self.by_study:
            lines.append(
                "  by study: "
                + ", ".join(f"{study} {n}" for study, n in sorted(self.by_study.items()))
            )
        lines.append(f"skipped {self.runs_skipped} run{_s(self.runs_skipped)} already present")
        lines.append(
            f"{len(self.errors)} error{_s(len(self.errors))}" + (":" if self.errors else "")
        )
        lines.extend(f"  {error}" for error in self.errors)
        return "\n".join(lines)


@dataclass
class _Tally:
    loaded: list[ImportedRun] = field(default_factory=list)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def import_paths(
    database_url: str,
    paths: Sequence[Path],
    *,
    default_study: str | None,
    batch_size: int = BATCH_SIZE,
    console: Console | None = None,
) -> ImportSummary:
    """Load finished histories from files and folders into the database at `database_url`.

    A run lands in the study its record names, else `default_study`, else its data set,
    else 'imported'. Bad records are reported (file:line and why) and skipped; a run id that
    is already stored with the same content is skipped, with other content it is an error.
    The schema must exist (`oracle migrate`).
    """
    started = time.perf_counter()
    summary = ImportSummary()
    files, summary.errors = expand(paths)
    summary.files = len(files)
    database = Database.connect(database_url, pool_size=1)
    try:
        with _progress(console) as progress:
            task = progress.add_task("importing", total=sum(uncompressed_size(f) for f in files))
            batch: list[tuple[str, ImportedRun]] = []
            for path in files:
                for entry in read(path, default_study):
                    progress.advance(task, entry.size)
                    if entry.error is not None:
                        summary.errors.append(entry.error)
                    elif entry.run is not None:
                        batch.append((entry.where, entry.run))
                    if len(batch) >= batch_size:
                        _commit(database, batch, summary)
                        batch = []
                        progress.update(task, description=_status(summary))
            _commit(database, batch, summary)
            progress.update(task, description=_status(summary))
    finally:
        database.dispose()
    summary.seconds = time.perf_counter() - started
    return summary


def _commit(
    database: Database, batch: Iterable[tuple[str, ImportedRun]], summary: ImportSummary
) -> None:
    """Store a batch in one transaction; the summary counts it only after the commit."""
    tally = _Tally()
    with database.writes.begin() as session:
        for where, run in batch:
            _store(session, where, run, tally)
    summary.runs_loaded += len(tally.loaded)
    summary.runs_skipped += tally.skipped
    summary.errors.extend(tally.errors)
    for run in tally.loaded:
        summary.checkpoints_loaded += len(run.checkpoints)
        summary.by_status[run.status] += 1
        summary.by_study[run.spec.study_id] += 1


def _store(session: Session, where: str, imported: ImportedRun, tally: _Tally) -> None:
    # Every refusal comes before the run's first write, so a bad run leaves nothing behind
    # and its batch goes on (create_run leaves a taken id alone instead of failing on it).
    try:
        run, created = store.create_run(session, imported.run_id, imported.spec)
    except Conflict as e:
        tally.errors.append(f"{where}: {e}")
        return
    if not created:
        difference = _difference(session, run, imported)
        if difference is None:
            tally.skipped += 1
        else:
            tally.errors.append(
                f"{where}: run {imported.run_id!r} is stored with {difference}; "
                "not imported (give it another run id to load it)"
            )
        return
    _insert_history(session, run, imported)
    store.finish_run(session, run, imported.status, imported.expected_final)
    tally.loaded.append(imported)


def _insert_history(session: Session, run: Run, imported: ImportedRun) -> None:
    """All checkpoints of a new run in one statement (per-checkpoint statements make a large
    import take minutes), and the run advanced to its last epoch. No one else can write to
    this run meanwhile: it was created in this transaction, unseen until commit."""
    rows = [_row(imported, point) for point in imported.checkpoints]
    store.insert_history(session, run, rows)


def _row(imported: ImportedRun, point: ImportedCheckpoint) -> dict[str, Any]:
    """The checkpoint's row as the API stores it, with an 'import' decision, not a policy's."""
    return {
        "epoch": point.epoch,
        "progress": point.epoch / imported.spec.max_epochs,
        **point.metrics.as_dict(),
        "wall_s": point.wall_s,
        "action": "continue",
        "policy": IMPORT_POLICY,
        "reason": IMPORT_REASON,
        "received_at": utcnow(),
    }


def _difference(session: Session, run: Run, imported: ImportedRun) -> str | None:
    """How the stored run differs from the imported one, or None if it is the same."""
    if run.status != imported.status:
        return f"status {run.status!r} (the import has {imported.status!r})"
    stored = [
        (c.epoch, store.Metrics(c.mqe, c.topographic_error, c.dead_neuron_ratio), c.wall_s)
        for c in store.checkpoints_of(session, run.pk)
    ]
    wanted = [(c.epoch, c.metrics, c.wall_s) for c in imported.checkpoints]
    if stored != wanted:
        return (
            f"another history ({len(stored)} checkpoints, the import has {len(wanted)})"
            if len(stored) != len(wanted)
            else "other checkpoint values"
        )
    final = store.Metrics(run.final_mqe, run.final_topographic_error, run.final_dead_neuron_ratio)
    if final != imported.expected_final:
        return "other final metrics"
    return None


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    )


def _status(summary: ImportSummary) -> str:
    return (
        f"{summary.runs_loaded} loaded, {summary.runs_skipped} skipped, "
        f"{len(summary.errors)} errors"
    )


def _s(n: int) -> str:
    return "" if n == 1 else "s"
