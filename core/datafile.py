"""Files of runs (JSON lines, JSON documents, the seed's CSV), plain or gzip-compressed: what
their format is and how to open them, for every reader (import, training, benchmarks)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import IO, cast

COMPRESSED = ".gz"


def format_suffix(path: Path) -> str:
    """The suffix that names the format, lower case: `runs.jsonl.gz` -> `.jsonl`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_compressed(path: Path) -> bool:
    return path.suffix.lower() == COMPRESSED


def open_binary(path: Path) -> IO[bytes]:
    """The file's (uncompressed) bytes."""
    if is_compressed(path):
        return cast(IO[bytes], gzip.open(path, "rb"))  # a GzipFile reads as any binary file
    return path.open("rb")


def open_text(path: Path, newline: str | None = None) -> IO[str]:
    """The file's text, UTF-8; `newline` as for `open` (the csv module wants "")."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline=newline)


def read_bytes(path: Path) -> bytes:
    with open_binary(path) as f:
        return f.read()


def read_lines(path: Path) -> list[str]:
    """The file's non-empty lines (a JSON-lines file's records)."""
    with open_text(path) as f:
        return [line for line in f if line.strip()]


def uncompressed_size(path: Path) -> int:
    """The bytes a reader will consume: what progress is counted against."""
    if not is_compressed(path):
        return path.stat().st_size
    with gzip.open(path, "rb") as f:
        return f.seek(0, io.SEEK_END)
