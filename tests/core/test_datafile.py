"""Data files plain or gzip-compressed read alike, and name their format without the `.gz`."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from core.datafile import format_suffix, read_bytes, read_lines, uncompressed_size
from tests.conftest import DATA_FILE
from training.dataset import load_file


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("runs.jsonl", ".jsonl"),
        ("runs.jsonl.gz", ".jsonl"),
        ("RUNS.CSV.GZ", ".csv"),
        ("run_history.json", ".json"),
        ("runs.gz", ""),
        ("runs", ""),
    ],
)
def test_format_suffix_ignores_the_compression(name: str, suffix: str) -> None:
    assert format_suffix(Path(name)) == suffix


def test_compressed_and_plain_files_read_the_same(tmp_path: Path) -> None:
    plain = tmp_path / "runs.jsonl"
    plain.write_bytes(b'{"a": 1}\n\n{"b": 2}\n')
    packed = tmp_path / "runs.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_bytes(packed) == read_bytes(plain)
    assert read_lines(packed) == read_lines(plain) == ['{"a": 1}\n', '{"b": 2}\n']
    assert uncompressed_size(packed) == uncompressed_size(plain) == plain.stat().st_size


def test_the_projects_data_file_trains_from_its_compressed_copy(data_file: Path) -> None:
    packed, plain = load_file(DATA_FILE), load_file(data_file)
    assert len(packed) == len(plain) == 600
    assert [r.run_id for r in packed] == [r.run_id for r in plain]
