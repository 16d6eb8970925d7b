"""Finished runs (from the database or a file) -> per-step training arrays, split by run.

A run's prefixes never straddle splits: the split is drawn over runs, stratified by group (the
study or data set) and outcome, with a seed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import store
from core.calibration import CONDITIONING_POLICIES
from core.datafile import format_suffix, open_text, read_lines
from core.features import (
    N_TARGETS,
    encode_context,
    encode_history,
    encode_targets,
    n_context,
    n_inputs,
    with_context,
)
from core.scoring import Weights
from core.tables import Checkpoint, Run, Study

# Padding value of the training arrays; no real step has every feature equal to it (progress
# lies in [0, 1]), so Keras' Masking layer skips exactly the padding.
MASK_VALUE = -99.0
# Outcome classes for stratification: quartiles of the final score within a group, + diverged.
_OUTCOME_BINS = 4


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    group: str  # the study (or the file's data set): the runs it is compared with
    max_epochs: int
    epochs: np.ndarray  # (n,) int
    history: np.ndarray  # (n, 4): progress, mqe, te, dead; NaN = non-finite
    final: np.ndarray  # (3,): NaN where the map produced no finite final
    config: dict[str, Any] | None = None  # as the worker sent it; None: unknown
    pk: int = 0  # the database's key (0: from a file); newer runs have larger keys
    # No decision of a policy that could stop it on its metrics (core.calibration): its
    # completion was not selected on how it went, so it is an unbiased sample of its study.
    unbiased: bool = True
    # Stopped before its end: the final is unknown (NaN); the history up to the stop is known.
    censored: bool = False

    @cached_property
    def context(self) -> np.ndarray:
        """The run's configuration and length as a model of feature schema 2 reads them; made
        once (the backtest asks at every checkpoint of every run)."""
        return encode_context(self.config, self.max_epochs)

    @property
    def trainable(self) -> bool:
        """Training data: reached max_epochs with finite finals (the DB's `completed`)."""
        return bool(np.all(np.isfinite(self.final))) and int(self.epochs[-1]) >= self.max_epochs


@dataclass(frozen=True)
class Split:
    train: list[RunRecord]
    validation: list[RunRecord]
    test: list[RunRecord]
    snapshot: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Arrays:
    """Padded inputs (N, T, F), targets (N, T, 3) or (N, 3), sample weights (N, T) or (N,)."""

    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray


# --- reading ---------------------------------------------------------------------------------


def _metric(value: Any) -> float:
    if value is None:
        return math.nan
    number = float(value)
    return number if math.isfinite(number) else math.nan


def _record(
    run_id: str,
    group: str,
    max_epochs: int,
    rows: Sequence[tuple[int, Any, Any, Any]],
    final: Any,
    config: Any = None,
) -> RunRecord:
    rows = sorted(rows, key=lambda r: r[0])
    epochs = np.array([int(r[0]) for r in rows], dtype=np.int64)
    history = np.array(
        [[e / max_epochs, _metric(m), _metric(t), _metric(d)] for e, m, t, d in rows],
        dtype=np.float64,
    ).reshape(-1, 4)
    return RunRecord(
        run_id,
        group,
        max_epochs,
        epochs,
        history,
        np.array([_metric(v) for v in final]),
        config if isinstance(config, dict) else None,
    )


def _from_json_line(obj: dict[str, Any]) -> RunRecord:
    final = obj.get("final") or {}
    rows = [
        (c["epoch"], c.get("mqe"), c.get("topographic_error"), c.get("dead_neuron_ratio"))
        for c in obj["checkpoints"]
    ]
    return _record(
        str(obj["run_id"]),
        str(obj.get("dataset") or obj.get("study_id") or "default"),
        int(obj["max_epochs"]),
        rows,
        [final.get("mqe"), final.get("topographic_error"), final.get("dead_neuron_ratio")],
        obj.get("config"),
    )


def _from_csv_row(row: dict[str, str]) -> RunRecord:
    """The seed's CSV: a run's history is one JSON column; its length is its last epoch."""
    h = json.loads(row["training_history"])
    rows = list(
        zip(h["epochs"], h["mqe"], h["topographic_error"], h["dead_neuron_ratio"], strict=True)
    )
    final = [row["final_mqe"], row["final_topographic_error"], row["final_dead_neuron_ratio"]]
    return _record(
        str(row["uid"]),
        str(row.get("dataset") or "default"),
        int(max(h["epochs"])),
        rows,
        [None if v in ("", None) else v for v in final],
    )


def load_file(path: str | Path) -> list[RunRecord]:
    """Runs from the seed's CSV or from JSON lines (the format of data/minisom_runs.jsonl.gz),
    either plain or gzip-compressed."""
    path = Path(path)
    if format_suffix(path) == ".csv":
        with open_text(path, newline="") as f:
            return [_from_csv_row(row) for row in csv.DictReader(f)]
    return [_from_json_line(json.loads(line)) for line in read_lines(path)]


def stopped_runs_query() -> Any:
    """Censored data in the database: runs stopped before their end (their finals unknown)."""
    return select(Run.pk).where(Run.status == "stopped")


def finished_runs_query(after_pk: int = 0) -> Any:
    """Training data in the database: completed at max_epochs (reference_seq), finite finals."""
    return select(Run.pk).where(
        Run.status == "completed",
        Run.reference_seq.is_not(None),
        Run.final_mqe.is_not(None),
        Run.final_topographic_error.is_not(None),
        Run.final_dead_neuron_ratio.is_not(None),
        Run.pk > after_pk,
    )


def count_finished(session: Session, after_pk: int = 0) -> int:
    query = finished_runs_query(after_pk).subquery()
    return int(session.scalar(select(func.count()).select_from(query)) or 0)


def load_database(
    session: Session, max_runs: int, censored: bool = False
) -> tuple[list[RunRecord], dict[str, Any]]:
    """The newest `max_runs` finished runs, oldest first, and the snapshot they form; with
    `censored`, also the newest `max_runs` stopped runs (RunRecord.censored, finals NaN)."""
    finished = _load_runs(session, finished_runs_query(), max_runs, censored=False)
    stopped = _load_runs(session, stopped_runs_query(), max_runs, censored=True) if censored else []
    snapshot = {
        "source": "database",
        "n_runs": len(finished),
        "n_censored": len(stopped),
        "n_unbiased": sum(r.unbiased for r in finished),
        "max_run_pk": max((r.pk for r in finished), default=0),
    }
    return sorted(finished + stopped, key=lambda r: r.pk), snapshot


def _load_runs(session: Session, query: Any, max_runs: int, censored: bool) -> list[RunRecord]:
    pks = query.order_by(Run.pk.desc()).limit(max_runs).subquery()
    runs = session.execute(
        select(
            Run.pk,
            Run.run_id,
            Study.study_id,
            Run.max_epochs,
            Run.final_mqe,
            Run.final_topographic_error,
            Run.final_dead_neuron_ratio,
            Run.config,
        )
        .join(Study, Study.pk == Run.study_pk)
        .where(Run.pk.in_(select(pks.c.pk)))
        .order_by(Run.pk)
    ).all()
    pk_list = [r.pk for r in runs]
    rows = store.histories_of(session, pk_list)
    conditioned = conditioned_runs(session, pk_list)
    nan = [None, None, None]
    return [
        dataclasses.replace(
            _record(
                r.run_id,
                r.study_id,
                r.max_epochs,
                rows[r.pk],
                nan
                if censored
                else [r.final_mqe, r.final_topographic_error, r.final_dead_neuron_ratio],
                r.config,
            ),
            pk=int(r.pk),
            unbiased=r.pk not in conditioned,
            censored=censored,
        )
        for r in runs
        if rows[r.pk]
    ]


def conditioned_runs(session: Session, pks: Sequence[int]) -> set[int]:
    """Of these runs, those a policy that could stop them on their metrics decided."""
    out: set[int] = set()
    for start in range(0, len(pks), 500):
        chunk = list(pks[start : start + 500])
        out.update(
            session.execute(
                select(Checkpoint.run_pk)
                .where(Checkpoint.run_pk.in_(chunk), Checkpoint.policy.in_(CONDITIONING_POLICIES))
                .distinct()
            ).scalars()
        )
    return out


# --- scores and the split --------------------------------------------------------------------


def score_weights(runs: Iterable[RunRecord]) -> dict[str, Weights]:
    """Per group: final MQE / the group's median final MQE + TE + 0.5 dead (the README's score).

    MQE has the data's scale; dividing by a group's median makes scores comparable across data
    sets, so one MAE and one threshold mean the same everywhere.
    """
    by_group: dict[str, list[float]] = {}
    for run in runs:
        if np.isfinite(run.final[0]):
            by_group.setdefault(run.group, []).append(float(run.final[0]))
    return {
        group: Weights(mqe=1.0 / max(float(np.median(values)), 1e-12))
        for group, values in by_group.items()
    }


def final_score(run: RunRecord, weights: dict[str, Weights]) -> float:
    return float(weights[run.group].scores(run.final[None, :])[0])


def _outcome(runs: Sequence[RunRecord]) -> list[str]:
    weights = score_weights(runs)
    scores = np.array([final_score(r, weights) if r.group in weights else np.inf for r in runs])
    groups = np.array([r.group for r in runs])
    out = np.empty(len(runs), dtype=object)
    for group in np.unique(groups):
        idx = np.flatnonzero(groups == group)
        finite = idx[np.isfinite(scores[idx])]
        out[idx] = f"{group}/diverged"
        if finite.size:
            ranks = np.argsort(np.argsort(scores[finite])) / finite.size
            bins = np.minimum((ranks * _OUTCOME_BINS).astype(int), _OUTCOME_BINS - 1)
            out[finite] = [f"{group}/q{b}" for b in bins]
    return [str(o) for o in out]


def split_runs(
    runs: Sequence[RunRecord], validation_share: float, test_share: float, seed: int
) -> Split:
    """70/15/15 (by default) by run, stratified by group and outcome, seeded."""
    rng = np.random.default_rng(seed)
    strata: dict[str, list[int]] = {}
    for i, key in enumerate(_outcome(runs)):
        strata.setdefault(key, []).append(i)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    carry = np.zeros(2)  # fractional shares carried between strata, so small strata add up
    for key in sorted(strata):
        members = np.array(strata[key])
        rng.shuffle(members)
        wanted = carry + len(members) * np.array([test_share, validation_share])
        take = np.floor(wanted).astype(int)
        carry = wanted - take
        n_test, n_val = int(take[0]), int(take[1])
        parts[2].extend(members[:n_test].tolist())
        parts[1].extend(members[n_test : n_test + n_val].tolist())
        parts[0].extend(members[n_test + n_val :].tolist())
    train, validation, test = ([runs[i] for i in sorted(p)] for p in parts)
    return Split(train, validation, test)


# --- arrays for Keras ------------------------------------------------------------------------


def _thinned(run: RunRecord, max_steps: int) -> np.ndarray:
    n = run.history.shape[0]
    if n <= max_steps:
        return run.history
    keep = np.unique(np.round(np.linspace(0, n - 1, max_steps)).astype(int))
    return run.history[keep]


@dataclass(frozen=True)
class Inputs:
    """How runs become input rows: the feature schema, and (schema 2) the share of runs,
    drawn with `seed`, shown as if their worker had sent no configuration."""

    schema: int = 1
    context_dropout: float = 0.0
    seed: int = 0


def step_arrays(runs: Sequence[RunRecord], max_steps: int, inputs: Inputs = Inputs()) -> Arrays:
    """For causal models: one padded sequence per run, a target at every step."""
    runs = [r for r in runs if r.trainable]
    histories = [_thinned(r, max_steps) for r in runs]
    length = max((h.shape[0] for h in histories), default=1)
    hidden = np.random.default_rng(inputs.seed).random(len(runs)) < inputs.context_dropout
    x = np.full((len(runs), length, n_inputs(inputs.schema)), MASK_VALUE, dtype=np.float32)
    y = np.zeros((len(runs), length, N_TARGETS), dtype=np.float32)
    weight = np.zeros((len(runs), length), dtype=np.float32)
    for i, (run, history) in enumerate(zip(runs, histories, strict=True)):
        n = history.shape[0]
        rows = encode_history(history)
        if inputs.schema >= 2:
            context = encode_context(None, run.max_epochs) if hidden[i] else run.context
            rows = with_context(rows, context, n_context(inputs.schema))
        x[i, :n] = rows
        y[i, :n] = encode_targets(history, run.final)
        weight[i, :n] = 1.0
    return Arrays(x, y, weight)


def censored_arrays(runs: Sequence[RunRecord], max_steps: int, inputs: Inputs = Inputs()) -> Arrays:
    """For causal models, the stopped runs: one padded sequence each, whose MQE target at
    every step is an upper bound (the last MQE seen), the other targets unknown (0, unused:
    training.train's loss reads only the bound of a censored sample)."""
    runs = [r for r in runs if r.censored and r.history.shape[0] >= 1]
    histories = [_thinned(r, max_steps) for r in runs]
    length = max((h.shape[0] for h in histories), default=1)
    x = np.full((len(runs), length, n_inputs(inputs.schema)), MASK_VALUE, dtype=np.float32)
    y = np.zeros((len(runs), length, N_TARGETS), dtype=np.float32)
    weight = np.zeros((len(runs), length), dtype=np.float32)
    for i, (run, history) in enumerate(zip(runs, histories, strict=True)):
        n = history.shape[0]
        rows = encode_history(history)
        if inputs.schema >= 2:
            rows = with_context(rows, run.context, n_context(inputs.schema))
        x[i, :n] = rows
        bound = history[-1, 1:4]
        if not np.isfinite(bound[0]):
            continue  # a diverged map: no bound to learn from (the guard stops those)
        y[i, :n, 0] = encode_targets(history, bound)[:, 0]
        weight[i, :n] = 1.0
    return Arrays(x, y, weight)


def prefix_arrays(runs: Sequence[RunRecord], max_steps: int, inputs: Inputs = Inputs()) -> Arrays:
    """For models that see the whole input (bidirectional): every prefix as its own sample."""
    steps = step_arrays(runs, max_steps, inputs)
    lengths = steps.weight.sum(axis=1).astype(int)
    total = int(lengths.sum())
    x = np.full((total, *steps.x.shape[1:]), MASK_VALUE, dtype=np.float32)
    y = np.zeros((total, N_TARGETS), dtype=np.float32)
    row = 0
    for i, n in enumerate(lengths):
        for k in range(1, n + 1):
            x[row, :k] = steps.x[i, :k]
            y[row] = steps.y[i, k - 1]
            row += 1
    return Arrays(x, y, np.ones(total, dtype=np.float32))
