"""Reading import files: JSON lines, JSON documents, the seed's dataset CSV, and folders of them.

Each reader yields one Entry per record, naming where it came from (file:line) and how many
bytes it consumed, so the caller can report progress and point at bad records.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.datafile import COMPRESSED, format_suffix, open_binary, read_bytes, uncompressed_size
from service.importer.records import ImportedRun, RecordError, run_from_record

JSON_LINES = (".jsonl", ".ndjson")
JSON_DOCUMENT = (".json",)
CSV = (".csv",)
SUFFIXES = JSON_LINES + JSON_DOCUMENT + CSV
HISTORY_SUFFIX = "_history"
CSV_KNOWN = ("uid", "run_id", "study_id", "dataset", "max_epochs", "training_history")
CSV_FINALS = {
    "mqe": "final_mqe",
    "topographic_error": "final_topographic_error",
    "dead_neuron_ratio": "final_dead_neuron_ratio",
}


@dataclass(frozen=True)
class Entry:
    """One record of a file: a checked run, or the reason it cannot be imported."""

    where: str
    size: int
    run: ImportedRun | None = None
    error: str | None = None


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """The files to read (folders walked, sorted) and the errors for paths that cannot be read."""
    files: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and format_suffix(p) in SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                errors.append(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
            files.extend(found)
        elif not path.is_file():
            errors.append(f"{path}: no such file or folder")
        elif format_suffix(path) not in SUFFIXES:
            errors.append(
                f"{path}: unknown format {format_suffix(path)!r}; expected JSON lines (.jsonl), "
                "a JSON run or history (.json) or the seed's dataset CSV (.csv), each may be "
                "gzip-compressed (.gz)"
            )
        else:
            files.append(path)
    return files, errors


def read(path: Path, default_study: str | None) -> Iterator[Entry]:
    suffix = format_suffix(path)
    try:
        if suffix in JSON_LINES:
            yield from _json_lines(path, default_study)
        elif suffix in CSV:
            yield from _dataset_csv(path, default_study)
        else:
            yield from _json_document(path, default_study)
    except OSError as e:
        yield Entry(str(path), 0, error=f"{path}: cannot be read: {e.strerror or e}")


def _entry(where: str, size: int, make: Any) -> Entry:
    try:
        return Entry(where, size, run=make())
    except RecordError as e:
        return Entry(where, size, error=f"{where}: {e}")


def _json_lines(path: Path, default_study: str | None) -> Iterator[Entry]:
    with open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                yield Entry(where, len(raw))
                continue
            try:
                record = json.loads(raw.strip())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield Entry(where, len(raw), error=f"{where}: not valid JSON: {_json_error(e)}")
                continue
            yield _entry(
                where, len(raw), lambda r=record: run_from_record(r, default_study=default_study)
            )


def _json_document(path: Path, default_study: str | None) -> Iterator[Entry]:
    raw = read_bytes(path)
    where = str(path)
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        yield Entry(where, len(raw), error=f"{where}: not valid JSON: {_json_error(e)}")
        return
    # A history file is named after its run: training_logs/{uid}_history.json.
    stem = Path(path.name.removesuffix(COMPRESSED)).stem.removesuffix(HISTORY_SUFFIX)
    if isinstance(document, list):
        share = len(raw) // max(len(document), 1)
        for i, record in enumerate(document):
            yield _entry(
                f"{where}[{i}]",
                share,
                lambda r=record: run_from_record(r, default_study=default_study),
            )
        return
    yield _entry(
        where,
        len(raw),
        lambda: run_from_record(document, default_study=default_study, fallback_id=stem),
    )


def _dataset_csv(path: Path, default_study: str | None) -> Iterator[Entry]:
    # One run per row; `training_history` holds the run's history as a JSON string.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open_binary(path) as f:
        consumed = 0

        def lines() -> Iterator[str]:
            nonlocal consumed
            for raw in f:
                consumed += len(raw)
                yield raw.decode("utf-8-sig" if consumed == len(raw) else "utf-8")

        reader = csv.DictReader(lines())
        fields = reader.fieldnames or []
        missing = [c for c in ("training_history", *CSV_FINALS.values()) if c not in fields]
        if "uid" not in fields and "run_id" not in fields:
            missing.insert(0, "uid")
        if missing:
            yield Entry(
                f"{path}:1",
                uncompressed_size(path),
                error=f"{path}:1: the header lacks {', '.join(missing)} (has {', '.join(fields)})",
            )
            return
        seen = 0  # the header's bytes count with the first row
        start = reader.line_num + 1
        for number, row in enumerate(reader, start=1):
            where = f"{path}:{start} (row {number})"
            yield _entry(where, consumed - seen, lambda r=row: _csv_run(r, default_study))
            seen = consumed
            start = reader.line_num + 1


def _csv_run(row: Mapping[str, str | None], default_study: str | None) -> ImportedRun:
    if None in row or any(value is None for value in row.values()):
        raise RecordError("the row has another number of cells than the header")
    text = row["training_history"] or ""
    try:
        history = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"training_history is not valid JSON: {_json_error(e)}") from e
    if not isinstance(history, dict):
        raise RecordError("training_history must be a JSON object with 'epochs' and the metrics")
    record: dict[str, Any] = {**history}
    for column in ("study_id", "dataset"):
        if row.get(column):
            record[column] = row[column]
    if row.get("max_epochs"):
        record["max_epochs"] = _cell(row["max_epochs"] or "")
    config = {
        name: _cell(value)
        for name, value in row.items()
        if name not in CSV_KNOWN and name not in CSV_FINALS.values() and value
    }
    if config:
        record["config"] = config
    cells = {name: (row[column] or "").strip() for name, column in CSV_FINALS.items()}
    final = None
    if any(cells.values()):
        # An empty or NaN cell: the map could not produce a finite number (a diverged map).
        final = {name: _cell(text) if text else None for name, text in cells.items()}
    return run_from_record(
        record,
        default_study=default_study,
        fallback_id=row.get("uid") or row.get("run_id"),
        final=final,
    )


def _cell(text: str) -> Any:
    """A CSV cell as the number it spells (int before float), else the text."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _json_error(e: ValueError) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at column {e.colno}" if e.lineno == 1 else f"{e.msg} (line {e.lineno})"
    return str(e)
