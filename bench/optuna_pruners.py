"""Optuna's pruners beside OraclePruner on a real MiniSom search: the same trials (a seeded
RandomSampler draws the same configurations whatever prunes them), the same maps (seeded per
trial); epochs spent, best score found, and how many of the best 10% of configurations
(ranked by their complete runs, from the unpruned study) each pruner killed.

    python -m bench.optuna_pruners                      # iris and wine, 5 seeds, ~9 min
    python -m bench.optuna_pruners --datasets iris --seeds 1 --trials 20   # a quick look

Each run starts its own `oracle serve` on a temporary SQLite file (the shipped model active,
no finished runs: the Oracle starts as cold as the other pruners), prints a markdown table and
rewrites the Optuna section of bench/RESULTS-integrations.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from examples.local_oracle import local_oracle
from examples.results import write_section
from examples.som_problem import (
    CATEGORIES,
    LEARNING_RATE,
    MAP_SIDE,
    SIGMA,
    load,
    train,
)
from oracle_client import SomMetrics
from oracle_client.optuna import OraclePruner, report_som

SECTION = "optuna"
PRUNERS = ("none", "median", "successive_halving", "wilcoxon", "oracle")


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """The configuration space of examples/som_problem.py, as Optuna suggestions."""
    config: dict[str, Any] = {
        "x": trial.suggest_int("x", *MAP_SIDE),
        "y": trial.suggest_int("y", *MAP_SIDE),
        "sigma": trial.suggest_float("sigma", *SIGMA),
        "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE, log=True),
    }
    for name, choices in CATEGORIES.items():
        config[name] = trial.suggest_categorical(name, choices)
    return config


def make_pruner(name: str, url: str, max_epochs: int) -> optuna.pruners.BasePruner:
    # Each at its defaults: what a user gets by swapping one line.
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner()
    if name == "oracle":
        return OraclePruner(url, max_epochs=max_epochs, budget=5.0)
    raise ValueError(name)


def objective_for(data: Any, max_epochs: int, seed: int) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        config = suggest(trial)

        def on_checkpoint(epoch: int, metrics: SomMetrics) -> bool:
            report_som(trial, epoch, *metrics)
            # At the last epoch the map is trained whatever a pruner says: keep it.
            return trial.should_prune() and epoch < max_epochs

        result = train(
            config,
            data,
            max_epochs,
            seed=seed * 100_003 + trial.number,
            on_checkpoint=on_checkpoint,
        )
        trial.set_user_attr("epochs", result.epochs)
        if result.stopped:
            raise optuna.TrialPruned()
        return result.score

    return objective


@dataclass(frozen=True)
class Outcome:
    dataset: str
    seed: int
    pruner: str
    epochs: int
    best: float
    pruned: frozenset[int]  # trial numbers
    finals: dict[int, float]  # trial number -> final score, complete trials
    params: dict[int, dict[str, Any]]
    seconds: float


def run_study(
    dataset: str, data: Any, seed: int, pruner: str, url: str, trials: int, max_epochs: int
) -> Outcome:
    name = f"{dataset}-s{seed}-{pruner}-{time.time_ns()}"  # a fresh Oracle study each time
    pruner_obj = make_pruner(pruner, url, max_epochs)
    study = optuna.create_study(
        study_name=name,
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=pruner_obj,
    )
    callbacks = [pruner_obj] if isinstance(pruner_obj, OraclePruner) else []
    started = time.perf_counter()
    study.optimize(objective_for(data, max_epochs, seed), n_trials=trials, callbacks=callbacks)
    seconds = time.perf_counter() - started
    done = study.trials
    return Outcome(
        dataset=dataset,
        seed=seed,
        pruner=pruner,
        epochs=sum(int(t.user_attrs["epochs"]) for t in done),
        best=float(study.best_value),
        pruned=frozenset(t.number for t in done if t.state == optuna.trial.TrialState.PRUNED),
        finals={
            t.number: float(t.value)
            for t in done
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None
        },
        params={t.number: dict(t.params) for t in done},
        seconds=seconds,
    )


def top_share(finals: dict[int, float], share: float = 0.1) -> set[int]:
    """The trial numbers of the best `share` of complete runs (at least one)."""
    ranked = sorted(finals, key=lambda n: finals[n])
    return set(ranked[: max(1, round(share * len(ranked)))])


def table(outcomes: list[Outcome], trials: int, max_epochs: int) -> str:
    rows = [
        "| data set | pruner | epochs spent (median) | vs no pruner | best score (median) "
        "| best trial kept | best 10% killed | trials pruned (median) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset in dict.fromkeys(o.dataset for o in outcomes):
        base = {o.seed: o for o in outcomes if o.dataset == dataset and o.pruner == "none"}
        for pruner in PRUNERS:
            mine = [o for o in outcomes if o.dataset == dataset and o.pruner == pruner]
            if not mine:
                continue
            killed = sum(len(top_share(base[o.seed].finals) & o.pruned) for o in mine)
            n_top = sum(len(top_share(base[o.seed].finals)) for o in mine)
            kept = sum(o.best <= base[o.seed].best + 1e-12 for o in mine)
            epochs = statistics.median(o.epochs for o in mine)
            ratio = statistics.median(o.epochs / base[o.seed].epochs for o in mine)
            rows.append(
                f"| {dataset} | {pruner} | {epochs:,.0f} | {ratio:.0%} "
                f"| {statistics.median(o.best for o in mine):.4f} | {kept}/{len(mine)} "
                f"| {killed}/{n_top} | {statistics.median(len(o.pruned) for o in mine):.0f}"
                f"/{trials} |"
            )
    return "\n".join(rows)


def per_seed(outcomes: list[Outcome]) -> str:
    rows = [
        "| data set | seed | pruner | epochs | best score | pruned | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.dataset} | {o.seed} | {o.pruner} | {o.epochs} | {o.best:.4f} "
            f"| {len(o.pruned)} | {o.seconds:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="iris,wine")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--pruners", default=",".join(PRUNERS))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    pruners = args.pruners.split(",")
    if "none" not in pruners:
        parser.error("the unpruned study ('none') is the reference: keep it in --pruners")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", module="optuna")  # Wilcoxon on a diverged map's inf
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    with local_oracle() as url:
        for dataset in args.datasets.split(","):
            data = load(dataset)
            for seed in range(args.seeds):
                for pruner in pruners:
                    o = run_study(dataset, data, seed, pruner, url, args.trials, args.max_epochs)
                    print(
                        f"{dataset} seed {seed} {pruner}: {o.epochs} epochs, best {o.best:.4f}, "
                        f"{len(o.pruned)} pruned, {o.seconds:.1f} s",
                        file=sys.stderr,
                    )
                    outcomes.append(o)
    # The paired design rests on this: every study saw the same configurations.
    for o in outcomes:
        ref = next(
            r for r in outcomes if (r.dataset, r.seed, r.pruner) == (o.dataset, o.seed, "none")
        )
        assert o.params == ref.params, f"{o.pruner} saw other configurations than the reference"
    command = "python -m bench.optuna_pruners " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    summary = table(outcomes, args.trials, args.max_epochs)
    print(summary)
    if not args.no_write:
        write_section(
            SECTION,
            f"## Optuna: `OraclePruner` beside Optuna's pruners\n\n"
            f"`{command.strip()}` ({time.perf_counter() - started:.0f} s). "
            f"{args.trials} trials per study, RandomSampler seeded per seed "
            f"(the same configurations for every pruner), max_epochs {args.max_epochs}, "
            f"16 log-spaced checkpoints, seeds 0..{args.seeds - 1}. Medians over seeds; "
            f"'best 10% killed' sums over seeds the pruned trials among the best 10% of each "
            f"unpruned study's complete runs; 'best trial kept' counts the seeds where the "
            f"pruner's best score equals the unpruned study's.\n\n{summary}\n\n"
            f"<details><summary>Per seed</summary>\n\n{per_seed(outcomes)}\n\n</details>",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
