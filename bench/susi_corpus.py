"""Builds data/susi_runs.jsonl.gz: real SOM trainings with the susi library (not MiniSom), measured
at irregular checkpoints; about 15 minutes on one core, and an interrupted build resumes.

    python bench/susi_corpus.py --out data/susi_runs.jsonl.gz [--runs-per-dataset 40] [--seed N]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import susi
from sklearn import datasets as skd
from sklearn.utils.validation import check_array
from susi.SOMUtils import modify_weight_matrix_online
from threadpoolctl import threadpool_limits

BASE_SEED = 20250117
# The generated data sets are drawn once with this seed: every run of a data set sees the same X.
DATA_SEED = 7
METRICS = ("mqe", "topographic_error", "dead_neuron_ratio")
NULL_METRICS: dict[str, float | None] = dict.fromkeys(METRICS)
# MiniSom's threshold for a rectangular grid: 1 (side) and sqrt(2) (diagonal) are adjacent.
TE_THRESHOLD = 1.42


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=0)) / x.std(axis=0)


def _anisotropic_blobs() -> np.ndarray:
    x, _ = skd.make_blobs(n_samples=400, centers=3, n_features=2, random_state=DATA_SEED)
    # The sheared blobs of scikit-learn's clustering examples: elongated, overlapping clusters.
    return x @ np.array([[0.6, -0.64], [-0.41, 0.85]])


def load_datasets() -> dict[str, np.ndarray]:
    """The ten data sets, z-scored; none of them is in the MiniSom corpus."""
    s = DATA_SEED
    raw: dict[str, np.ndarray] = {
        "diabetes": skd.load_diabetes().data,
        "blobs_3c_2d": skd.make_blobs(300, n_features=2, centers=3, random_state=s)[0],
        "blobs_8c_6d": skd.make_blobs(500, n_features=6, centers=8, random_state=s)[0],
        "blobs_aniso": _anisotropic_blobs(),
        "moons": skd.make_moons(400, noise=0.08, random_state=s)[0],
        "circles": skd.make_circles(400, noise=0.05, factor=0.5, random_state=s)[0],
        "s_curve": skd.make_s_curve(500, noise=0.05, random_state=s)[0],
        "swiss_roll": skd.make_swiss_roll(500, noise=0.1, random_state=s)[0],
        "classification_10d": skd.make_classification(
            600,
            n_features=10,
            n_informative=6,
            n_redundant=2,
            n_clusters_per_class=2,
            random_state=s,
        )[0],
        "gaussian_quantiles": skd.make_gaussian_quantiles(
            n_samples=400, n_features=4, n_classes=3, random_state=s
        )[0],
    }
    return {name: _zscore(x) for name, x in raw.items()}


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _round(value: float) -> float:
    return float(f"{value:.5g}")


def draw_config(rng: np.random.Generator, n_samples: int) -> dict[str, Any]:
    """One configuration the way an evolutionary search draws one; keys are susi's own names."""
    mode = str(rng.choice(["online", "batch"]))
    # A batch epoch is one weight update, an online epoch len(X) of them: batch runs get more.
    max_epochs = int(rng.integers(10, 151 if mode == "online" else 251))
    lr_start = _log_uniform(rng, 0.01, 1.0)
    config: dict[str, Any] = {
        "n_rows": int(rng.integers(3, 26)),
        "n_columns": int(rng.integers(3, 26)),
        "init_mode_unsupervised": str(rng.choice(["random", "random_data", "pca"])),
        # susi decays its rates over n_iter_unsupervised: the whole run, whatever its mode.
        "n_iter_unsupervised": max_epochs * (n_samples if mode == "online" else 1),
        "train_mode_unsupervised": mode,
        "neighborhood_mode_unsupervised": str(rng.choice(["linear", "min", "exp", "expsquare"])),
        "learn_mode_unsupervised": str(rng.choice(["min", "exp", "expsquare", "linear"])),
        # susi 1.4.3's other metrics are broken: its node-by-node loop writes `distmat[node]`
        # with node an array, which fills whole rows (and fails where n_columns > n_rows).
        "distance_metric": "euclidean",
        "learning_rate_start": _round(lr_start),
        "learning_rate_end": _round(lr_start * _log_uniform(rng, 0.001, 0.5)),
        "nbh_dist_weight_mode": "mexican-hat" if rng.random() < 0.2 else "pseudo-gaussian",
        "random_state": int(rng.integers(0, 2**31 - 1)),
        "max_epochs": max_epochs,
    }
    return config


def draw_schedule(rng: np.random.Generator, max_epochs: int) -> list[int]:
    """Checkpoint epochs: sorted, distinct, 4-30 of them, always ending at max_epochs; a random
    stride from a random start, uniform random epochs, or the first epochs dense then sparse."""
    count = min(int(rng.integers(4, 31)), max_epochs)
    before_last = np.arange(1, max_epochs)
    kind = int(rng.integers(3))
    if kind == 0:
        # At most count - 1 strided epochs before the last one.
        low = math.ceil((max_epochs - 1) / (count - 1))
        stride = int(rng.integers(low, 2 * low + 1))
        epochs = set(range(int(rng.integers(1, stride + 1)), max_epochs, stride))
    elif kind == 1:
        epochs = set(rng.choice(before_last, size=count - 1, replace=False).tolist())
    else:
        dense = int(rng.integers(1, max(1, count // 2) + 1))
        sparse = np.geomspace(dense + 1, max_epochs, num=max(1, count - dense))
        epochs = set(range(1, dense + 1)) | {int(e) for e in np.round(sparse)}
    epochs = {e for e in epochs if 1 <= e < max_epochs}
    # Rounding or a long stride can leave too few: top up with uniform random epochs.
    missing = min(4, max_epochs) - 1 - len(epochs)
    if missing > 0:
        spare = np.setdiff1d(before_last, sorted(epochs))
        epochs |= set(rng.choice(spare, size=missing, replace=False).tolist())
    return [*sorted(int(e) for e in epochs), max_epochs]


def make_som(config: dict[str, Any]) -> susi.SOMClustering:
    params = {k: v for k, v in config.items() if k != "max_epochs"}
    # One process, no joblib workers: the BMU search must run in this loop, on one core.
    return susi.SOMClustering(**params, n_jobs=1, verbose=0)


def train_epochs(som: susi.SOMClustering, x: np.ndarray, max_epochs: int) -> Iterator[int]:
    """susi's `fit` (SOMClustering.fit and _train_unsupervised_som), step by step: yields each
    epoch number after that epoch's updates; the weights are `som.unsuper_som_`.

    An online iteration is one random sample, so an epoch is len(X) iterations; a batch
    iteration is one epoch."""
    np.random.seed(seed=som.random_state)
    som.X_ = check_array(x, dtype=np.float64)
    som.sample_weights_ = np.full(fill_value=1.0, shape=(len(som.X_), 1))
    som._init_unsuper_som()
    online = som.train_mode_unsupervised == "online"
    per_epoch = len(som.X_) if online else 1
    if som.n_iter_unsupervised != max_epochs * per_epoch:
        raise ValueError("n_iter_unsupervised must cover max_epochs exactly")
    it = 0
    for epoch in range(1, max_epochs + 1):
        for _ in range(per_epoch):
            if online:
                dp = np.random.randint(low=0, high=len(som.X_))
                bmu_pos = som.get_bmu(som.X_[dp], som.unsuper_som_)
                learning_rate = som._calc_learning_rate(
                    curr_it=it, mode=som.learn_mode_unsupervised
                )
                nbh_func = som._calc_neighborhood_func(
                    curr_it=it, mode=som.neighborhood_mode_unsupervised
                )
                dist_weight_matrix = som._get_nbh_distance_weight_matrix(nbh_func, bmu_pos)
                som.unsuper_som_ = modify_weight_matrix_online(
                    som_array=som.unsuper_som_,
                    dist_weight_matrix=dist_weight_matrix,
                    true_vector=som.X_[dp],
                    learning_rate=learning_rate * som.sample_weights_[dp],
                )
            else:
                bmus = som.get_bmus(som.X_)
                nbh_func = som._calc_neighborhood_func(
                    curr_it=it, mode=som.neighborhood_mode_unsupervised
                )
                dist_weight_block = som._get_nbh_distance_weight_block(nbh_func, bmus)
                som.unsuper_som_ = som._modify_weight_matrix_batch(
                    som.unsuper_som_, dist_weight_block, som.X_
                )
            it += 1
        yield epoch
    som._set_bmus(som.X_)
    som.fitted_ = True


def measure(weights: np.ndarray, x: np.ndarray) -> dict[str, float | None]:
    """MQE (susi's get_quantization_error), topographic error (MiniSom's, rectangular grid) and
    the share of units that are no sample's BMU, all euclidean; all null if any is non-finite."""
    rows, cols, dim = weights.shape
    if not np.isfinite(weights).all():
        return dict(NULL_METRICS)
    flat = weights.reshape(-1, dim)
    with np.errstate(over="ignore", invalid="ignore"):
        dist = np.sqrt(((x[:, None, :] - flat[None, :, :]) ** 2).sum(axis=2))
        if not np.isfinite(dist).all():
            return dict(NULL_METRICS)
        samples = np.arange(len(x))
        first = dist.argmin(axis=1)
        mqe = float(np.linalg.norm(x - flat[first], axis=1).mean())
        dist[samples, first] = np.inf
        second = dist.argmin(axis=1)
    gap = np.hypot(first // cols - second // cols, first % cols - second % cols)
    values = {
        "mqe": mqe,
        "topographic_error": float((gap > TE_THRESHOLD).mean()),
        "dead_neuron_ratio": 1.0 - np.unique(first).size / (rows * cols),
    }
    if not all(math.isfinite(v) for v in values.values()):
        return dict(NULL_METRICS)
    return values


def run_one(
    run_id: str,
    dataset: str,
    x: np.ndarray,
    config: dict[str, Any],
    schedule: list[int],
    seed: dict[str, int],
) -> dict[str, Any]:
    """Trains one map, measuring at each scheduled epoch; wall_s counts training time only."""
    max_epochs = config["max_epochs"]
    som = make_som(config)
    wanted = set(schedule)
    checkpoints: list[dict[str, Any]] = []
    wall = 0.0
    steps = train_epochs(som, x, max_epochs)
    # Overflowing maps are expected (they are recorded as diverged), not worth a warning.
    with np.errstate(all="ignore"):
        while True:
            t0 = time.perf_counter()
            try:
                epoch = next(steps, None)
            except IndexError:
                # susi's get_bmu finds no minimum among NaN distances: the map blew up mid-epoch.
                if np.isfinite(som.unsuper_som_).all():
                    raise
                epoch = None
            wall += time.perf_counter() - t0
            if epoch is None:
                break
            if epoch not in wanted:
                continue
            metrics = measure(som.unsuper_som_, x)
            checkpoints.append({"epoch": epoch, **metrics, "wall_s": round(wall, 4)})
            if metrics["mqe"] is None:
                break
    steps.close()
    # A blown-up map stays blown up: the rest of its schedule is null, at the time it stopped.
    for epoch in schedule[len(checkpoints) :]:
        checkpoints.append({"epoch": epoch, **NULL_METRICS, "wall_s": round(wall, 4)})
    diverged = any(c["mqe"] is None for c in checkpoints)
    last = checkpoints[-1]
    return {
        "run_id": run_id,
        "source": "susi",
        "dataset": dataset,
        "config": config,
        "max_epochs": max_epochs,
        "checkpoints": checkpoints,
        "final": {k: last[k] for k in METRICS},
        "total_wall_s": round(wall, 4),
        "diverged": diverged,
        "n_samples": int(x.shape[0]),
        "n_features": int(x.shape[1]),
        "seed": seed,
        "susi_version": version("susi"),
        "schema_version": 1,
    }


Planned = tuple[str, str, dict[str, Any], list[int], dict[str, int]]


def plan(data: dict[str, np.ndarray], runs_per_dataset: int, base_seed: int) -> Iterator[Planned]:
    """Every run's id, data set, config and schedule, from its own seed: a resumed build draws
    the same runs, whichever were already done."""
    names = list(data)
    for i in range(runs_per_dataset * len(names)):
        name = names[i % len(names)]
        rng = np.random.default_rng([base_seed, i])
        config = draw_config(rng, len(data[name]))
        schedule = draw_schedule(rng, config["max_epochs"])
        yield f"susi-{i + 1:04d}", name, config, schedule, {"base_seed": base_seed, "run_index": i}


def write_corpus(runs: list[dict[str, Any]], out: Path) -> None:
    """gzip with mtime 0 and no file name, so the bytes depend on the runs only."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for run in runs:
            gz.write((json.dumps(run) + "\n").encode())
    out.write_bytes(buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/susi_runs.jsonl.gz"))
    parser.add_argument("--runs-per-dataset", type=int, default=40)
    parser.add_argument("--seed", type=int, default=BASE_SEED)
    parser.add_argument(
        "--limit", type=int, default=None, help="train only the first N runs (to time a few)"
    )
    args = parser.parse_args(argv)
    # Finished runs go to a plain JSON-lines file first: a rerun after an interruption resumes.
    partial = args.out.with_name(args.out.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            if line.strip():
                run = json.loads(line)
                done[run["run_id"]] = run
    data = load_datasets()
    runs = list(plan(data, args.runs_per_dataset, args.seed))[: args.limit]
    started = time.perf_counter()
    with threadpool_limits(limits=1), partial.open("a") as sink:
        for k, (run_id, name, config, schedule, seed) in enumerate(runs, 1):
            # A run of another --seed or of an older search space is not resumed but redone.
            if run_id in done and done[run_id]["config"] == config:
                continue
            run = run_one(run_id, name, data[name], config, schedule, seed)
            sink.write(json.dumps(run) + "\n")
            sink.flush()
            done[run_id] = run
            final = run["final"]["mqe"]
            print(
                f"[{k}/{len(runs)}] {run_id} {name:<19} {config['train_mode_unsupervised']:<6} "
                f"{config['n_rows']}x{config['n_columns']} {run['max_epochs']:>3} ep "
                f"{len(schedule):>2} cp {run['total_wall_s']:7.2f}s mqe "
                f"{'diverged' if final is None else f'{final:.3f}'} "
                f"(elapsed {time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    write_corpus([done[r[0]] for r in runs], args.out)
    os.remove(partial)
    print(f"wrote {len(runs)} runs to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
