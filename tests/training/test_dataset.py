"""Runs from files and from the database; the split is by run, stratified, and seeded."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core.tables import Run, Study
from tests.training.conftest import store_runs
from training.dataset import (
    MASK_VALUE,
    RunRecord,
    count_finished,
    load_database,
    load_file,
    prefix_arrays,
    split_runs,
    step_arrays,
)


def test_split_is_by_run_and_covers_every_run(runs: list[RunRecord]) -> None:
    split = split_runs(runs, 0.15, 0.15, seed=7)
    ids = [[r.run_id for r in part] for part in (split.train, split.validation, split.test)]
    assert sum(len(p) for p in ids) == len(runs)
    assert not set(ids[0]) & set(ids[1]) and not set(ids[0]) & set(ids[2])
    assert not set(ids[1]) & set(ids[2])
    assert abs(len(ids[2]) / len(runs) - 0.15) < 0.02
    assert abs(len(ids[1]) / len(runs) - 0.15) < 0.02


def test_split_is_stratified_and_seeded(runs: list[RunRecord]) -> None:
    split = split_runs(runs, 0.15, 0.15, seed=7)
    assert [r.run_id for r in split.test] == [
        r.run_id for r in split_runs(runs, 0.15, 0.15, seed=7).test
    ]
    assert [r.run_id for r in split.test] != [
        r.run_id for r in split_runs(runs, 0.15, 0.15, seed=8).test
    ]
    everywhere, test = Counter(r.group for r in runs), Counter(r.group for r in split.test)
    for group, n in everywhere.items():
        assert abs(test[group] / n - 0.15) < 0.04
    diverged = sum(not r.trainable for r in runs)
    assert 0 < sum(not r.trainable for r in split.test) <= diverged * 0.15 + 2


def test_step_arrays_hold_one_padded_sequence_per_finished_run(runs: list[RunRecord]) -> None:
    some = runs[:30]
    arrays = step_arrays(some, max_steps=64)
    finished = [r for r in some if r.trainable]
    assert arrays.x.shape[0] == len(finished)
    lengths = arrays.weight.sum(axis=1).astype(int)
    assert list(lengths) == [len(r.history) for r in finished]
    for i, n in enumerate(lengths):
        assert np.all(arrays.x[i, n:] == MASK_VALUE) and np.all(arrays.x[i, :n] != MASK_VALUE)
    prefixes = prefix_arrays(some, max_steps=64)
    assert prefixes.x.shape[0] == lengths.sum()
    thinned = step_arrays(some, max_steps=5)
    assert thinned.x.shape[1] == 5


def test_seed_csv_and_json_lines_read_the_same_run(tmp_path: Path, runs: list[RunRecord]) -> None:
    run = next(r for r in runs if r.trainable)
    history = {
        "epochs": run.epochs.tolist(),
        "mqe": run.history[:, 1].tolist(),
        "topographic_error": run.history[:, 2].tolist(),
        "dead_neuron_ratio": run.history[:, 3].tolist(),
    }
    path = tmp_path / "seed.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["uid", "final_mqe", "final_topographic_error", "final_dead_neuron_ratio",
             "training_history"]
        )  # fmt: skip
        writer.writerow([run.run_id, *run.final.tolist(), json.dumps(history)])
    (loaded,) = load_file(path)
    assert loaded.run_id == run.run_id and loaded.max_epochs == run.max_epochs
    np.testing.assert_allclose(loaded.history, run.history)
    np.testing.assert_allclose(loaded.final, run.final)
    assert loaded.trainable
    # The seed's CSV has no configuration: the run is one of unknown config.
    assert run.config is not None and loaded.config is None


def test_database_gives_finished_runs_only(database_url: str, runs: list[RunRecord]) -> None:
    finished = [r for r in runs if r.trainable][:12]
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        store_runs(session, finished, "completed")
    with Session(engine) as session, session.begin():
        stopped = [r for r in runs if r.trainable][12:15]
        study = session.query(Study).one()
        for run in stopped:
            session.add(Run(run_id=run.run_id, study_pk=study.pk, max_epochs=run.max_epochs,
                            status="stopped", final_mqe=1.0, final_topographic_error=0.1,
                            final_dead_neuron_ratio=0.1))  # fmt: skip
    with Session(engine) as session:
        loaded, snapshot = load_database(session, max_runs=100)
        assert count_finished(session) == 12
        assert count_finished(session, after_pk=snapshot["max_run_pk"]) == 0
    engine.dispose()
    assert [r.run_id for r in loaded] == [r.run_id for r in finished]
    assert all(r.group == "s1" and r.trainable for r in loaded)
    for got, want in zip(loaded, finished, strict=True):
        np.testing.assert_allclose(got.history, want.history)
        assert got.config == want.config and got.config is not None  # what the model reads
        np.testing.assert_array_equal(got.context, want.context)
    assert snapshot["n_runs"] == 12


def test_stopped_runs_load_as_censored_and_decided_runs_as_biased(
    database_url: str, runs: list[RunRecord]
) -> None:
    finished = [r for r in runs if r.trainable]
    engine = create_engine(database_url)
    partial = [
        dataclasses.replace(r, epochs=r.epochs[:5], history=r.history[:5]) for r in finished[6:9]
    ]
    with Session(engine) as session, session.begin():
        store_runs(session, finished[:4], "completed")  # warm-up decided them: unbiased
        store_runs(session, finished[4:6], "completed", policy="oracle")  # survivors
        store_runs(session, partial, "stopped", policy="oracle")
    with Session(engine) as session:
        plain, _ = load_database(session, max_runs=100)
        loaded, snapshot = load_database(session, max_runs=100, censored=True)
    engine.dispose()
    assert [r.run_id for r in plain] == [r.run_id for r in finished[:6]]
    assert [r.unbiased for r in plain] == [True] * 4 + [False] * 2
    censored = [r for r in loaded if r.censored]
    assert [r.run_id for r in censored] == [r.run_id for r in partial]
    for got, want in zip(censored, partial, strict=True):
        np.testing.assert_allclose(got.history, want.history)  # the history up to the stop
        assert np.isnan(got.final).all() and not got.trainable and not got.unbiased
    assert snapshot["n_runs"] == 6 and snapshot["n_censored"] == 3
    assert snapshot["n_unbiased"] == 4
