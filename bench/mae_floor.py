"""How close can any predictor get to "score MAE at 20% progress <= 0.02"? A floor from the data.

    python bench/mae_floor.py [--data FILE] [--folds 5] [--seed 7] [--progress 0.2]

Measured as evaluate.py measures the model report's "score MAE at 20%" (0.26 for the LSTM, out
of fold, in bench/RESULTS-model.md): score = final MQE / the data set's median final MQE + TE +
0.5 x dead; truth and prediction capped at ERROR_CAP (10); runs = the finished ones (with a
final: the runs marked `diverged` in the data file have none and are left out, as there). The
second pair of columns also leaves out the finished runs whose final blew up to the cap. Each
row predicts the final score from a run's history up to one checkpoint: at a progress p, the
last checkpoint before the end with epoch / max_epochs <= p (the first one if none); the
progress column is the median progress of those checkpoints (below p: many runs checkpoint on a
log scale).

- final = score at 20% (--progress): no learning at all.
- boosting, history at 20%: out-of-fold HistGradientBoostingRegressor (absolute error) of
  final - current score, from the history so far: the metrics, log MQE / median, log MQE ratio
  to the first checkpoint, recent and overall slopes, best score so far, progress. K folds by
  run, drawn as bench/model_quality.py draws them (the same seed gives the LSTM's folds).
- boosting, history + config at 20%: the same plus the run's configuration, which the
  service's Predictor never receives: map size x*y, aspect, sigma, sigma / map side, learning
  rate, max_epochs, the categorical choices and the data set (as categorical features).
- final = score at 50%.
- final = score before the end: the last checkpoint before the final one. How much the score
  still moves in the last stretch of a run: what is left to predict after ~3/4 of it.
- boosting, history + config before the end: the same, learned. If even this misses 0.02, a
  prediction from 20% of the run cannot be expected to meet it.

The naive rows use the score weights (per-data-set median final MQE) of all runs, as the model
report does; the learned rows those of their training folds only, for features, targets and the
held-out runs' truth alike.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

from core.scoring import Weights
from training.dataset import RunRecord, final_score, load_file, score_weights
from training.evaluate import ERROR_CAP

DATA = str(Path(__file__).resolve().parents[1] / "data" / "minisom_runs.jsonl.gz")
TARGET = 0.02
CATEGORICAL = (
    "neighborhood_function",
    "topology",
    "activation_distance",
    "decay_function",
    "sigma_decay_function",
    "init",
    "decay_granularity",
    "dataset",
)


@dataclass(frozen=True)
class Row:
    name: str
    errors: np.ndarray  # |prediction - truth| per finished run, both capped at ERROR_CAP
    progress: float  # median progress of the checkpoints predicted from


@dataclass(frozen=True)
class Floor:
    rows: list[Row]
    blown_up: np.ndarray  # per finished run: final score at the cap


# --- the history up to a checkpoint ----------------------------------------------------------


def checkpoint_at(run: RunRecord, progress: float) -> int:
    """The last checkpoint before the end at or before `progress` (evaluate's choice), else 0."""
    p = run.history[:, 0]
    rows = np.flatnonzero((p < 1.0) & (p <= progress + 1e-9))
    return int(rows[-1]) if rows.size else 0


def last_before_end(run: RunRecord) -> int:
    return int(np.flatnonzero(run.history[:, 0] < 1.0)[-1])


def capped_scores(run: RunRecord, weights: dict[str, Weights], upto: int) -> np.ndarray:
    """Scores of checkpoints 0..upto (+inf where non-finite), capped."""
    return np.minimum(weights[run.group].scores(run.history[: upto + 1, 1:4]), ERROR_CAP)


def truth(run: RunRecord, weights: dict[str, Weights]) -> float:
    return min(final_score(run, weights), ERROR_CAP)


def history_features(run: RunRecord, k: int, weights: dict[str, Weights]) -> list[float]:
    h = run.history[: k + 1]
    # log of MQE / the median final MQE; floored as in core.features (some maps hit 0)
    log_mqe = np.log(np.maximum(h[:, 1], 1e-9) * weights[run.group].mqe)
    scores = capped_scores(run, weights, k)
    j = max(k - 1, 0)
    step = max(h[k, 0] - h[j, 0], 1e-9)
    span = max(h[k, 0] - h[0, 0], 1e-9)
    values = [
        h[k, 0],
        log_mqe[k],
        h[k, 2],
        h[k, 3],
        log_mqe[k] - log_mqe[0],
        scores[k],
        scores.min(),
        (log_mqe[k] - log_mqe[j]) / step,
        (h[k, 2] - h[j, 2]) / step,
        (h[k, 3] - h[j, 3]) / step,
        (log_mqe[k] - log_mqe[0]) / span,
        (scores[k] - scores[0]) / span,
    ]
    return [float(v) if np.isfinite(v) else np.nan for v in values]  # NaN: the trees' "missing"


# --- the configuration -----------------------------------------------------------------------


def load_configs(path: str | Path) -> dict[str, dict[str, Any]]:
    """run_id -> the JSON line's config (load_file keeps neither it nor more than the group)."""
    with Path(path).open() as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return {str(o["run_id"]): {**o["config"], "dataset": o.get("dataset")} for o in lines}


def config_features(config: dict[str, Any], codes: dict[str, list[str]]) -> list[float]:
    x, y, sigma = float(config["x"]), float(config["y"]), float(config["sigma"])
    numeric = [x * y, x / y, sigma, sigma / max(x, y), float(config["learning_rate"])]
    numeric.append(float(config["max_epochs"]))
    return numeric + [float(codes[c].index(str(config.get(c)))) for c in CATEGORICAL]


# --- predictors ------------------------------------------------------------------------------


def naive_errors(
    runs: Sequence[RunRecord], points: Sequence[int], weights: dict[str, Weights]
) -> np.ndarray:
    """final = the score at each run's checkpoint."""
    return np.array(
        [
            abs(capped_scores(run, weights, k)[k] - truth(run, weights))
            for run, k in zip(runs, points, strict=True)
        ]
    )


def learned_errors(
    runs: Sequence[RunRecord],
    points: Sequence[int],
    fold_of: np.ndarray,
    configs: dict[str, dict[str, Any]] | None,
    seed: int,
) -> np.ndarray:
    """Out of fold: gradient boosting of final - current score, from each run's checkpoint."""
    codes = {}
    if configs is not None:
        codes = {c: sorted({str(configs[r.run_id].get(c)) for r in runs}) for c in CATEGORICAL}
    errors = np.zeros(len(runs))
    for fold in np.unique(fold_of):
        train = fold_of != fold
        weights = score_weights(r for r, t in zip(runs, train, strict=True) if t)
        x = [history_features(run, k, weights) for run, k in zip(runs, points, strict=True)]
        categorical = None
        if configs is not None:
            x = [
                a + config_features(configs[r.run_id], codes) for a, r in zip(x, runs, strict=True)
            ]
            categorical = list(range(len(x[0]) - len(CATEGORICAL), len(x[0])))
        features = np.array(x)
        y = np.array([truth(run, weights) for run in runs])
        current = np.array(
            [capped_scores(run, weights, k)[k] for run, k in zip(runs, points, strict=True)]
        )
        model = HistGradientBoostingRegressor(
            loss="absolute_error",
            max_iter=200,
            learning_rate=0.075,
            max_leaf_nodes=15,
            min_samples_leaf=5,  # the 15 blown-up runs need leaves of their own
            categorical_features=categorical,
            random_state=seed,
        )
        model.fit(features[train], (y - current)[train])
        predicted = np.minimum(model.predict(features[~train]) + current[~train], ERROR_CAP)
        errors[~train] = np.abs(predicted - y[~train])
    return errors


def measure(data: str | Path, folds: int, seed: int, progress: float) -> Floor:
    every = load_file(data)
    # bench/model_quality.py's folds: a seeded permutation of the file's runs, modulo K.
    fold_all = np.random.default_rng(seed).permutation(len(every)) % folds
    keep = [i for i, run in enumerate(every) if run.trainable]
    runs = [every[i] for i in keep]
    fold_of = fold_all[keep]
    weights = score_weights(runs)
    configs = load_configs(data)
    early = [checkpoint_at(run, progress) for run in runs]
    half = [checkpoint_at(run, 0.5) for run in runs]
    late = [last_before_end(run) for run in runs]

    def row(name: str, points: list[int], errors: np.ndarray) -> Row:
        median = np.median([run.history[k, 0] for run, k in zip(runs, points, strict=True)])
        return Row(name, errors, float(median))

    at = f"at {progress:.0%}"
    rows = [
        row(f"final = score {at}", early, naive_errors(runs, early, weights)),
        row(f"boosting, history {at}", early, learned_errors(runs, early, fold_of, None, seed)),
        row(
            f"boosting, history + config {at}",
            early,
            learned_errors(runs, early, fold_of, configs, seed),
        ),
    ]
    if progress < 0.5:
        rows.append(row("final = score at 50%", half, naive_errors(runs, half, weights)))
    rows += [
        row("final = score before the end", late, naive_errors(runs, late, weights)),
        row(
            "boosting, history + config before the end",
            late,
            learned_errors(runs, late, fold_of, configs, seed),
        ),
    ]
    blown_up = np.array([truth(run, weights) >= ERROR_CAP for run in runs])
    return Floor(rows, blown_up)


# --- the table -------------------------------------------------------------------------------


def table(floor: Floor, progress: float) -> str:
    ok = ~floor.blown_up
    lines = [
        f"| predictor of the final score | progress | finished runs ({ok.size}): MAE | median AE "
        f"| final score < {ERROR_CAP:g} ({int(ok.sum())}): MAE | median AE |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in floor.rows:
        cells = [f"{np.mean(e):.4f} | {np.median(e):.4f}" for e in (row.errors, row.errors[ok])]
        lines.append(f"| {row.name} | {row.progress:.2f} | {' | '.join(cells)} |")
    lines.append(f"| target (the issue) | {progress:.2f} | {TARGET} | | {TARGET} | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--progress", type=float, default=0.2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    floor = measure(args.data, args.folds, args.seed, args.progress)
    print(table(floor, args.progress))
    print(f"\n{args.folds} folds, seed {args.seed}, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
