"""`oracle import`: every format, idempotent re-import, bad records, imported runs as reference."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from core.db import normalize_url
from core.tables import Checkpoint, Run, Study
from oracle.cli import app
from service.importer import ImportSummary, import_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "import"
RUNS = FIXTURES / "runs.jsonl"
BAD_RUNS = FIXTURES / "bad.jsonl"
LOGS = FIXTURES / "training_logs"
DATASET = FIXTURES / "dataset.csv"
BAD_DATASET = FIXTURES / "bad.csv"


def _import(url: str, *paths: Path, study: str | None = None, **kw: Any) -> ImportSummary:
    return import_paths(url, list(paths), default_study=study, **kw)


def _counts(url: str) -> dict[str, int]:
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        counts = {
            table.__tablename__: conn.scalar(select(func.count()).select_from(table)) or 0
            for table in (Study, Run, Checkpoint)
        }
    engine.dispose()
    return counts


def _runs(url: str) -> dict[str, dict[str, Any]]:
    """Every stored run by id, with its study id and its checkpoints."""
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        studies = {pk: sid for pk, sid in conn.execute(select(Study.pk, Study.study_id))}
        runs = {row.run_id: dict(row._mapping) for row in conn.execute(select(Run.__table__))}
        points = conn.execute(select(Checkpoint.__table__).order_by("run_pk", "epoch")).all()
    engine.dispose()
    by_pk = {run["pk"]: run for run in runs.values()}
    for run in runs.values():
        run["study_id"] = studies[run["study_pk"]]
        run["checkpoints"] = []
    for point in points:
        by_pk[point.run_pk]["checkpoints"].append(dict(point._mapping))
    return runs


def _run_line(run_id: str, study: str, max_epochs: int = 20, scale: float = 1.0) -> str:
    epochs = [1, 2, 5, 10, 20][: 5 if max_epochs == 20 else 4]
    return json.dumps(
        {
            "run_id": run_id,
            "study_id": study,
            "dataset": "iris",
            "max_epochs": max_epochs,
            "checkpoints": [
                {
                    "epoch": e,
                    "mqe": scale / (1 + i),
                    "topographic_error": 0.1,
                    "dead_neuron_ratio": 0.2,
                    "wall_s": 0.01 * e,
                }
                for i, e in enumerate(epochs)
            ],
        }
    )


def test_import_json_lines_stores_runs_with_import_decisions(database_url: str) -> None:
    summary = _import(database_url, RUNS)
    assert summary.errors == []
    assert (summary.runs_loaded, summary.runs_skipped, summary.checkpoints_loaded) == (3, 0, 14)
    assert summary.by_status == {"completed": 2, "stopped": 1}
    runs = _runs(database_url)
    full, diverged, short = runs["fx-1"], runs["fx-2"], runs["fx-3"]
    # The study is the run's data set when neither the record nor --study names one.
    assert (full["study_id"], diverged["study_id"], short["study_id"]) == ("iris", "iris", "wine")
    assert full["status"] == "completed" and full["reference_seq"] is not None
    assert (full["last_epoch"], full["n_checkpoints"], full["max_epochs"]) == (20, 5, 20)
    assert full["config"] == {"x": 5, "y": 5, "sigma": 1.2} and full["dataset"] == "iris"
    assert full["final_mqe"] == full["checkpoints"][-1]["mqe"]
    # A diverged map that ran to max_epochs is completed, with non-finite (NULL) finals.
    assert diverged["status"] == "completed" and diverged["reference_seq"] is not None
    assert diverged["final_mqe"] is None and diverged["checkpoints"][-1]["mqe"] is None
    # A history that ends before max_epochs was stopped: not reference data.
    assert short["status"] == "stopped" and short["reference_seq"] is None
    for run in runs.values():
        for point in run["checkpoints"]:
            assert (point["action"], point["policy"], point["reason"]) == (
                "continue",
                "import",
                "imported history",
            )
            assert point["progress"] == point["epoch"] / run["max_epochs"]


def test_import_study_option_names_the_study_of_runs_that_name_none(database_url: str) -> None:
    _import(database_url, RUNS, study="ea-7")
    assert {run["study_id"] for run in _runs(database_url).values()} == {"ea-7"}


def test_import_seed_history_folder_in_both_spellings(database_url: str) -> None:
    summary = _import(database_url, LOGS)
    assert summary.errors == []
    assert (summary.files, summary.runs_loaded, summary.checkpoints_loaded) == (3, 3, 11)
    runs = _runs(database_url)
    # uid = file stem without `_history`; max_epochs = the key, else the last epoch.
    assert set(runs) == {"seed-a", "seed-b", "seed-c"}
    assert (runs["seed-a"]["max_epochs"], runs["seed-a"]["status"]) == (30, "completed")
    assert (runs["seed-b"]["max_epochs"], runs["seed-b"]["status"]) == (10, "completed")
    assert (runs["seed-c"]["max_epochs"], runs["seed-c"]["status"]) == (50, "stopped")
    # The production logger's topo_error / dead_ratio land in the canonical columns.
    short = runs["seed-b"]["checkpoints"]
    assert [p["topographic_error"] for p in short] == [0.45, 0.3, 0.25]
    assert [p["dead_neuron_ratio"] for p in short] == [0.3, 0.25, 0.2]
    assert {run["study_id"] for run in runs.values()} == {"imported"}


def test_import_one_seed_history_file(database_url: str) -> None:
    summary = _import(database_url, LOGS / "seed-a_history.json", study="seed")
    assert (summary.runs_loaded, summary.errors) == (1, [])
    run = _runs(database_url)["seed-a"]
    assert run["study_id"] == "seed"
    assert [p["mqe"] for p in run["checkpoints"]] == [1.5, 1.1, 0.9, 0.8]


def test_import_seed_dataset_csv(database_url: str) -> None:
    summary = _import(database_url, DATASET, study="seed")
    assert summary.errors == []
    assert (summary.runs_loaded, summary.checkpoints_loaded) == (2, 6)
    runs = _runs(database_url)
    d, e = runs["seed-d"], runs["seed-e"]
    assert (d["final_mqe"], d["final_topographic_error"], d["final_dead_neuron_ratio"]) == (
        0.7,
        0.1,
        0.15,
    )
    assert d["status"] == "completed" and d["max_epochs"] == 25
    # Columns beyond the seed's known ones are kept as the run's configuration.
    assert d["config"] == {"learning_rate": 0.5, "map_size": "10x10"}
    assert [p["topographic_error"] for p in e["checkpoints"]] == [0.4, 0.25, 0.2]


def test_import_twice_adds_nothing(database_url: str) -> None:
    paths = (RUNS, LOGS, DATASET)
    first = _import(database_url, *paths)
    counts = _counts(database_url)
    again = _import(database_url, *paths)
    assert again.errors == []
    assert (again.runs_loaded, again.runs_skipped) == (0, first.runs_loaded)
    assert _counts(database_url) == counts
    assert counts == {"studies": 3, "runs": 8, "checkpoints": 31}


def test_import_of_a_stored_run_id_with_other_content_is_an_error(
    database_url: str, tmp_path: Path
) -> None:
    _import(database_url, RUNS)
    before = _runs(database_url)
    records = [json.loads(line) for line in RUNS.read_text().splitlines()]
    records[0]["checkpoints"][2]["mqe"] = 0.123  # fx-1: another value at epoch 5
    records[1]["max_epochs"] = 30  # fx-2: another run body
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    summary = _import(database_url, changed)
    assert (summary.runs_loaded, summary.runs_skipped) == (0, 1)
    assert len(summary.errors) == 2
    assert summary.errors[0].startswith(f"{changed}:1: run 'fx-1' is stored with other checkpoint")
    assert summary.errors[1].startswith(f"{changed}:2: run 'fx-2' exists with another body")
    assert _runs(database_url) == before


def test_import_reports_bad_records_by_file_and_line_and_loads_the_good(database_url: str) -> None:
    summary = _import(database_url, BAD_RUNS, BAD_DATASET, batch_size=1)
    assert summary.runs_loaded == 3
    assert set(_runs(database_url)) == {"bad-ok-1", "bad-ok-2", "csv-ok"}
    expected = [
        (f"{BAD_RUNS}:2: run 'bad-neg'", "mqe: must be >= 0"),
        (f"{BAD_RUNS}:3: ", "not valid JSON"),
        (f"{BAD_RUNS}:4: run 'bad-ratio'", "dead_neuron_ratio: must be in [0, 1]"),
        (f"{BAD_RUNS}:6: run 'bad-order'", "epochs must increase, but epoch 5 follows 5"),
        (f"{BAD_RUNS}:7: run 'bad-above'", "epoch 25 is above max_epochs 20"),
        (f"{BAD_RUNS}:8: run 'bad-nomax'", "no 'max_epochs'"),
        (f"{BAD_DATASET}:3 (row 2): ", "training_history is not valid JSON"),
        (f"{BAD_DATASET}:4 (row 3): run 'csv-short'", "'mqe' must be a list as long as"),
        (f"{BAD_DATASET}:5 (row 4): run 'csv-final'", "final: topographic_error: must be in"),
    ]
    assert len(summary.errors) == len(expected), summary.errors
    for error, (where, what) in zip(summary.errors, expected, strict=True):
        assert error.startswith(where) and what in error, error


def test_import_reports_paths_it_cannot_read(database_url: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = _import(database_url, notes, empty, tmp_path / "missing.jsonl", RUNS)
    assert summary.runs_loaded == 3
    assert [e.split(":")[0] for e in summary.errors] == [
        str(notes),
        str(empty),
        str(tmp_path / "missing.jsonl"),
    ]
    assert "unknown format '.txt'" in summary.errors[0]


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_import_real_runs_file_sample(
    database_url: str, data_file: Path, tmp_path: Path, compressed: bool
) -> None:
    lines = data_file.read_text().splitlines()
    text = ("\n".join(lines[:60]) + "\n").encode()
    sample = tmp_path / ("sample.jsonl.gz" if compressed else "sample.jsonl")
    sample.write_bytes(gzip.compress(text) if compressed else text)
    summary = _import(database_url, sample, batch_size=25)
    assert (summary.runs_loaded, summary.errors) == (60, [])
    assert sum(summary.by_study.values()) == 60
    runs = _runs(database_url)
    for line in lines[:60]:
        record = json.loads(line)
        run = runs[record["run_id"]]
        assert run["study_id"] == record["dataset"] and run["status"] == "completed"
        assert run["final_mqe"] == record["final"]["mqe"]
        assert [p["epoch"] for p in run["checkpoints"]] == [
            c["epoch"] for c in record["checkpoints"]
        ]


def test_imported_runs_become_the_reference_set(
    client: TestClient, database_url: str, tmp_path: Path
) -> None:
    body = {"study_id": "ref", "max_epochs": 20}
    point = {"epoch": 10, "mqe": 0.3, "topographic_error": 0.1, "dead_neuron_ratio": 0.2}
    client.put("/v1/runs/before", json=body)
    early = client.post("/v1/runs/before/checkpoints", json=point).json()
    assert early["policy"] == "warmup" and "finished run" in early["reason"]

    history = tmp_path / "ref.jsonl"
    history.write_text("\n".join(_run_line(f"ref-{i}", "ref", scale=1 + i) for i in range(6)))
    assert _import(database_url, history).runs_loaded == 6

    client.put("/v1/runs/after", json=body)
    decision = client.post("/v1/runs/after/checkpoints", json=point).json()
    assert decision["policy"] == "median", decision
    assert "6 finished runs" in decision["reason"]
    assert client.get("/v1/studies/ref").json()["runs"]["completed"] == 6


def test_imported_run_reads_like_one_reported_over_http(
    client: TestClient, database_url: str, tmp_path: Path
) -> None:
    line = json.loads(_run_line("imported-1", "same"))
    client.put("/v1/runs/http-1", json={"study_id": "same", "max_epochs": 20, "dataset": "iris"})
    for point in line["checkpoints"]:
        assert client.post("/v1/runs/http-1/checkpoints", json=point).status_code == 200
    assert client.post("/v1/runs/http-1/finish", json={"status": "completed"}).status_code == 200
    history = tmp_path / "one.jsonl"
    history.write_text(json.dumps(line) + "\n")
    assert _import(database_url, history).runs_loaded == 1

    def comparable(run_id: str) -> dict[str, Any]:
        run = client.get(f"/v1/runs/{run_id}").json()
        for key in ("run_id", "created_at", "finished_at"):
            run.pop(key)
        for point in run["checkpoints"]:
            point.pop("received_at")
            point.pop("decision")
        return run

    assert comparable("imported-1") == comparable("http-1")
    runs = _runs(database_url)
    assert runs["http-1"]["reference_seq"] == 1 and runs["imported-1"]["reference_seq"] == 2


def test_cli_import_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    args = ["import", str(RUNS), str(LOGS), str(DATASET), "--database-url", url]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "loaded 8 runs (6 completed, 2 stopped) with 31 checkpoints from 5 files" in first.output
    assert "0 errors" in first.output

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "loaded 0 runs" in again.output and "skipped 8 runs already present" in again.output

    bad = runner.invoke(app, ["import", str(BAD_RUNS), "--database-url", url, "--study", "x"])
    assert bad.exit_code == 1
    assert "loaded 2 runs" in bad.output
    assert f"{BAD_RUNS}:2: run 'bad-neg'" in bad.output
    assert _counts(url)["runs"] == 10
