"""`oracle worker`: trains real SOMs (MiniSom) under EA-style random configurations on
scikit-learn's bundled data sets and reports every checkpoint through the worker SDK."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("oracle.worker")

DATASETS = ("iris", "wine", "breast_cancer", "digits")
# As in data/minisom_runs.jsonl.gz: log-spaced, epoch 1 and the last always present.
CHECKPOINTS = 16


@dataclass(frozen=True)
class Job:
    url: str
    token: str | None
    study_prefix: str
    index: int
    seed: int
    datasets: tuple[str, ...]
    min_epochs: int
    max_epochs: int


@dataclass(frozen=True)
class Outcome:
    run_id: str
    dataset: str
    status: str
    epochs_run: int
    max_epochs: int
    seconds: float


def checkpoint_epochs(max_epochs: int, count: int = CHECKPOINTS) -> list[int]:
    """The schedule of data/minisom_runs.jsonl.gz: the first geometric grid from 1 to max_epochs
    whose rounded epochs hold `count` distinct values (every epoch when there are fewer)."""
    if max_epochs <= count:
        return list(range(1, max_epochs + 1))
    n = count
    while True:
        epochs = np.unique(np.round(np.geomspace(1, max_epochs, n)).astype(int))
        if len(epochs) >= count:
            return [int(e) for e in epochs]
        n += 1


def random_config(rng: np.random.Generator, min_epochs: int, max_epochs: int) -> dict[str, Any]:
    """One configuration drawn the way an evolutionary search would draw one."""
    return {
        "x": int(rng.integers(4, 31)),
        "y": int(rng.integers(4, 31)),
        "sigma": round(float(rng.uniform(0.3, 14.0)), 4),
        "learning_rate": round(float(10 ** rng.uniform(-2, np.log10(2.0))), 5),
        "neighborhood_function": str(rng.choice(["gaussian", "triangle", "mexican_hat", "bubble"])),
        "topology": str(rng.choice(["rectangular", "hexagonal"], p=[0.73, 0.27])),
        "activation_distance": str(rng.choice(["euclidean", "cosine", "manhattan"])),
        "decay_function": str(
            rng.choice(["linear_decay_to_zero", "inverse_decay_to_zero", "asymptotic_decay"])
        ),
        "sigma_decay_function": str(
            rng.choice(["inverse_decay_to_one", "linear_decay_to_one", "asymptotic_decay"])
        ),
        "init": str(rng.choice(["random", "pca"])),
        "max_epochs": int(rng.integers(min_epochs, max_epochs + 1)),
        "init_seed": int(rng.integers(0, 2**31 - 1)),
        "decay_granularity": "iteration",
    }


def load_dataset(name: str) -> np.ndarray:
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
    }
    data = np.asarray(loaders[name]().data, dtype=np.float64)
    std = data.std(axis=0)
    return (data - data.mean(axis=0)) / np.where(std > 0, std, 1.0)


def train_one(job: Job) -> Outcome:
    """Train one map epoch by epoch, report at the checkpoints, obey the decisions."""
    from minisom import MiniSom

    from oracle_client import Oracle, som_metrics

    rng = np.random.default_rng([job.seed, job.index])
    dataset = str(rng.choice(job.datasets))
    config = random_config(rng, job.min_epochs, job.max_epochs)
    data = load_dataset(dataset)
    max_epochs = config["max_epochs"]
    som = MiniSom(
        config["x"],
        config["y"],
        data.shape[1],
        sigma=config["sigma"],
        learning_rate=config["learning_rate"],
        decay_function=config["decay_function"],
        neighborhood_function=config["neighborhood_function"],
        topology=config["topology"],
        activation_distance=config["activation_distance"],
        random_seed=config["init_seed"],
        sigma_decay_function=config["sigma_decay_function"],
    )
    if config["init"] == "pca":
        som.pca_weights_init(data)
    else:
        som.random_weights_init(data)
    total = max_epochs * len(data)
    order_rng = np.random.default_rng(config["init_seed"])
    report_at = set(checkpoint_epochs(max_epochs))
    started = time.perf_counter()
    status, epochs_run, t = "completed", 0, 0
    with (
        Oracle(job.url, job.token) as oracle,
        oracle.run(
            f"{job.study_prefix}-{dataset}",
            max_epochs,
            config=config,
            dataset=dataset,
            run_id=f"{job.study_prefix}-{job.seed}-{job.index}",
        ) as run,
        np.errstate(all="ignore"),  # a diverging map overflows; its NaN metrics are reported
    ):
        for epoch in range(1, max_epochs + 1):
            for i in order_rng.permutation(len(data)):
                som.update(data[i], som.winner(data[i]), t, total)
                t += 1
            epochs_run = epoch
            if epoch in report_at:
                m = som_metrics(som, data)
                decision = run.report(
                    epoch,
                    m.mqe,
                    m.topographic_error,
                    m.dead_neuron_ratio,
                    wall_s=round(time.perf_counter() - started, 4),
                )
                if decision.action == "stop" and epoch < max_epochs:
                    status = "stopped"
                    run.finish("stopped")
                    break
    return Outcome(
        run.run_id, dataset, status, epochs_run, max_epochs, time.perf_counter() - started
    )


def run_workers(
    url: str,
    token: str | None,
    *,
    runs: int,
    parallel: int,
    seed: int,
    study_prefix: str,
    datasets: tuple[str, ...] = DATASETS,
    min_epochs: int = 20,
    max_epochs: int = 300,
) -> list[Outcome]:
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown data sets {sorted(unknown)}; choose from {DATASETS}")
    if not 1 <= min_epochs <= max_epochs:
        raise ValueError("need 1 <= min_epochs <= max_epochs")
    jobs = [
        Job(url, token, study_prefix, i, seed, datasets, min_epochs, max_epochs)
        for i in range(runs)
    ]
    outcomes: list[Outcome] = []
    with ProcessPoolExecutor(max_workers=parallel) as pool:
        for future in as_completed([pool.submit(train_one, job) for job in jobs]):
            outcome = future.result()
            log.info(
                "run %s (%s): %s after %d/%d epochs in %.1fs",
                outcome.run_id,
                outcome.dataset,
                outcome.status,
                outcome.epochs_run,
                outcome.max_epochs,
                outcome.seconds,
            )
            outcomes.append(outcome)
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    planned = sum(o.max_epochs for o in outcomes)
    run = sum(o.epochs_run for o in outcomes)
    stopped = sum(o.status == "stopped" for o in outcomes)
    saved = 1 - run / planned if planned else 0.0
    return (
        f"{len(outcomes)} runs: {stopped} stopped early, {len(outcomes) - stopped} completed; "
        f"{run}/{planned} epochs trained ({saved:.1%} saved)"
    )
