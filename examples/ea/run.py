"""An evolutionary search over MiniSom configurations with a fixed budget of training epochs,
run once with The Oracle and once without, over several seeds: the best map found, the
configurations evaluated, the epochs used, and a plot of best score against epochs spent.

    python -m examples.ea.run                       # iris and wine, 8 seeds, ~11 min
    python -m examples.ea.run --datasets iris --seeds 3 --budget 1200   # a quick look

The EA: (mu + lambda) with mu = lambda = --population; parents by tournament, uniform
crossover, per-gene mutation; an individual's fitness is its map's final score, or for a run
the Oracle stopped, the Oracle's forecast of that final score. Both arms have the same budget: an
evaluation starts only while a whole run still fits in it, so no arm ever overspends, and the
epochs the Oracle saves become more evaluations.
Starts its own `oracle serve` on a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from examples.local_oracle import local_oracle
from examples.results import write_section
from examples.som_problem import crossover, load, mutate, random_config, train
from oracle_client import Oracle

HERE = Path(__file__).resolve().parent
PLOT = HERE / "ea_budget.png"


@dataclass(frozen=True)
class Evaluation:
    config: dict[str, Any]
    epochs: int
    score: float  # the map's measured score where its training ended
    fitness: float  # what selection ranks by
    stopped: bool


@dataclass
class Search:
    """One EA run: what it evaluated, and its best score after each evaluation."""

    evaluations: list[Evaluation] = field(default_factory=list)
    trace: list[tuple[int, float]] = field(default_factory=list)  # (epochs spent, best score)

    @property
    def spent(self) -> int:
        return sum(e.epochs for e in self.evaluations)

    @property
    def best(self) -> float:
        return min((e.score for e in self.evaluations), default=float("inf"))

    def add(self, evaluation: Evaluation) -> Evaluation:
        self.evaluations.append(evaluation)
        self.trace.append((self.spent, self.best))
        return evaluation


class Evaluator:
    """Trains one configuration; with an Oracle, reports each checkpoint and obeys `stop`."""

    def __init__(
        self, data: np.ndarray, max_epochs: int, oracle: Oracle | None, study_id: str, dataset: str
    ) -> None:
        self.data, self.max_epochs = data, max_epochs
        self.oracle, self.study_id, self.dataset = oracle, study_id, dataset

    def __call__(self, config: dict[str, Any], seed: int) -> Evaluation:
        if self.oracle is None:
            done = train(config, self.data, self.max_epochs, seed)
            return Evaluation(config, done.epochs, done.score, done.score, stopped=False)
        with self.oracle.run(
            self.study_id, self.max_epochs, config=config, dataset=self.dataset
        ) as run:  # finished as completed or stopped on leaving the block
            done = train(
                config,
                self.data,
                self.max_epochs,
                seed,
                lambda epoch, metrics: run.report(epoch, *metrics).should_stop,
            )
        fitness = done.score
        decision = run.last_decision
        if done.stopped and decision is not None and decision.predicted_score is not None:
            # A stopped map is unfinished: rank it by where the Oracle says it was heading.
            fitness = max(decision.predicted_score, 0.0)
        return Evaluation(config, done.epochs, done.score, fitness, done.stopped)


def evolve(
    evaluate: Evaluator,
    rng: np.random.Generator,
    *,
    population: int,
    budget: int,
    mutation: float,
    tournament: int,
) -> Search:
    search = Search()

    def fits() -> bool:
        return search.spent + evaluate.max_epochs <= budget

    def evaluated(config: dict[str, Any]) -> Evaluation:
        return search.add(evaluate(config, int(rng.integers(2**31 - 1))))

    pop: list[Evaluation] = []
    for _ in range(population):
        if not fits():
            break
        pop.append(evaluated(random_config(rng)))
    while fits():
        children: list[Evaluation] = []
        for _ in range(population):
            if not fits():
                break
            a, b = (_tournament(pop, rng, tournament) for _ in range(2))
            genes = crossover(a.config, b.config, rng) if rng.random() < 0.7 else dict(a.config)
            children.append(evaluated(mutate(genes, rng, mutation)))
        pop = sorted(pop + children, key=lambda e: e.fitness)[:population]
    return search


def _tournament(pop: list[Evaluation], rng: np.random.Generator, k: int) -> Evaluation:
    picks = rng.choice(len(pop), size=min(k, len(pop)), replace=False)
    return min((pop[i] for i in picks), key=lambda e: e.fitness)


def best_at(trace: list[tuple[int, float]], grid: np.ndarray) -> np.ndarray:
    """The best score found with at most each grid value of epochs spent (inf before any)."""
    spent = np.array([s for s, _ in trace])
    best = np.array([b for _, b in trace])
    index = np.searchsorted(spent, grid, side="right") - 1
    return np.where(index >= 0, best[np.maximum(index, 0)], np.inf)


def epochs_to_reach(trace: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, best in trace if best <= target), None)


def median_curve(searches: list[Search], grid: np.ndarray) -> np.ndarray:
    """The median over seeds of the best score found by each grid value of epochs spent."""
    return np.median(np.array([best_at(s.trace, grid) for s in searches]), axis=0)


def median_reach(arms: dict[str, list[Search]], budget: int) -> dict[str, int | None]:
    """Per arm, the epochs at which its median curve first reaches the final value of the
    no-Oracle median curve: the plot's answer to 'how soon is the map as good'."""
    grid = np.arange(budget + 1)
    target = median_curve(arms["without"], grid)[-1]
    out: dict[str, int | None] = {}
    for arm, searches in arms.items():
        hits = np.flatnonzero(median_curve(searches, grid) <= target)
        out[arm] = int(grid[hits[0]]) if hits.size else None
    return out


def plot(results: dict[str, dict[str, list[Search]]], budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, budget, 301)
    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 4.4), squeeze=False)
    for ax, (dataset, arms) in zip(axes[0], results.items(), strict=True):
        reach = median_reach(arms, budget)
        for arm, color in (("without", "tab:gray"), ("with", "tab:blue")):
            curves = np.array([best_at(s.trace, grid) for s in arms[arm]])
            ok = np.all(np.isfinite(curves), axis=0)  # from where every seed has a map
            median = np.median(curves[:, ok], axis=0)
            lo, hi = np.percentile(curves[:, ok], [25, 75], axis=0)
            evals = statistics.median(len(s.evaluations) for s in arms[arm])
            label = f"{arm} the Oracle ({evals:.0f} configurations, median)"
            ax.plot(grid[ok], median, color=color, label=label, lw=2)
            ax.fill_between(grid[ok], lo, hi, color=color, alpha=0.18, lw=0)
            if reach[arm] is not None:
                ax.axvline(reach[arm], color=color, ls=":", lw=1.2)
        final = median_curve(arms["without"], np.array([budget]))[0]
        ax.axhline(final, color="tab:gray", ls=":", lw=1.2)
        ax.annotate(
            "dotted: where each median curve first reaches\nthe no-Oracle search's final median",
            xy=(0.98, 0.62),
            xycoords="axes fraction",
            ha="right",
            fontsize=8,
            color="0.35",
        )
        ax.set_title(f"{dataset}: best map score vs epochs spent ({len(arms['with'])} seeds)")
        ax.set_xlabel("training epochs spent by the EA")
        ax.set_ylabel("best score so far (mqe + te + 0.5 dead; lower is better)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.text(0.01, 0.01, "median over seeds, band: 25-75%", fontsize=8, color="0.4")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, dict[str, list[Search]]], budget: int) -> str:
    rows = [
        "| data set | arm | best score (median) | configurations evaluated | stopped early "
        "| epochs used | epochs to match the no-Oracle best |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, arms in results.items():
        targets = [s.best for s in arms["without"]]
        for arm in ("without", "with"):
            searches = arms[arm]
            reach = [epochs_to_reach(s.trace, t) for s, t in zip(searches, targets, strict=True)]
            reached = [r for r in reach if r is not None]
            match = (
                f"{statistics.median(reached):,.0f} ({len(reached)}/{len(reach)} seeds)"
                if reached
                else f"never (0/{len(reach)})"
            )
            best = statistics.median(s.best for s in searches)
            evaluated = statistics.median(len(s.evaluations) for s in searches)
            stopped = statistics.median(sum(e.stopped for e in s.evaluations) for s in searches)
            spent = statistics.median(s.spent for s in searches)
            rows.append(
                f"| {dataset} | {arm} the Oracle | {best:.4f} | {evaluated:.0f} | {stopped:.0f} "
                f"| {spent:,.0f} | {match} |"
            )
    reach_rows = [
        "",
        "| data set | median curve reaches the no-Oracle final median: without | with | fewer |",
        "| --- | --- | --- | --- |",
    ]
    for dataset, arms in results.items():
        reach = median_reach(arms, budget)
        without, with_ = reach["without"], reach["with"]
        fewer = f"{1 - with_ / without:.0%}" if with_ is not None and without else "-"
        reach_rows.append(
            f"| {dataset} | {without:,} epochs | "
            f"{'never' if with_ is None else f'{with_:,} epochs'} | {fewer} |"
        )
    return "\n".join(rows + reach_rows)


def per_seed(results: dict[str, dict[str, list[Search]]]) -> str:
    rows = [
        "| data set | seed | arm | best score | configurations | stopped | epochs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset, arms in results.items():
        for arm, searches in arms.items():
            for seed, s in enumerate(searches):
                stopped = sum(e.stopped for e in s.evaluations)
                rows.append(
                    f"| {dataset} | {seed} | {arm} | {s.best:.4f} | {len(s.evaluations)} "
                    f"| {stopped} | {s.spent} |"
                )
    return "\n".join(rows)


def _shown(path: Path) -> str:
    """`path` from the repository's root, as the results file names it."""
    try:
        return str(path.resolve().relative_to(HERE.parents[1]))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="iris,wine")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--budget", type=int, default=3000, help="training epochs per search")
    parser.add_argument("--max-epochs", type=int, default=60, help="one map's planned epochs")
    parser.add_argument("--mutation", type=float, default=0.3, help="per-gene probability")
    parser.add_argument("--tournament", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--no-write", action="store_true", help="print and plot only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, dict[str, list[Search]]] = {}
    with local_oracle() as url, Oracle(url, budget=5.0) as oracle:
        for dataset in args.datasets.split(","):
            data = load(dataset)
            results[dataset] = {"without": [], "with": []}
            for seed in range(args.seeds):
                for arm in ("without", "with"):
                    study = f"ea-{dataset}-s{seed}-{time.time_ns()}"  # a cold study each time
                    evaluate = Evaluator(
                        data, args.max_epochs, oracle if arm == "with" else None, study, dataset
                    )
                    t0 = time.perf_counter()
                    search = evolve(
                        evaluate,
                        np.random.default_rng(seed),
                        population=args.population,
                        budget=args.budget,
                        mutation=args.mutation,
                        tournament=args.tournament,
                    )
                    results[dataset][arm].append(search)
                    print(
                        f"{dataset} seed {seed} {arm} the Oracle: best {search.best:.4f}, "
                        f"{len(search.evaluations)} configurations, {search.spent} epochs, "
                        f"{time.perf_counter() - t0:.1f} s",
                        file=sys.stderr,
                    )
    plot(results, args.budget, args.plot)
    summary = table(results, args.budget)
    print(summary)
    print(f"plot: {args.plot}")
    if not args.no_write:
        command = " ".join(["python -m examples.ea.run", *(sys.argv[1:] if argv is None else argv)])
        write_section(
            "ea",
            f"## An EA that spends what the Oracle saves\n\n"
            f"`{command.strip()}` ({time.perf_counter() - started:.0f} s): population "
            f"{args.population} (mu + lambda), mutation {args.mutation} per gene, tournament "
            f"{args.tournament}, a budget of {args.budget} training epochs per search, maps of "
            f"max_epochs {args.max_epochs} (16 log-spaced checkpoints), seeds "
            f"0..{args.seeds - 1}; the same seed draws the same first population in both arms. "
            f"Medians over seeds. 'Epochs to match' is where the search with the Oracle first "
            f"holds a map as good as the best the search without it found with the whole "
            f"budget (same seed). Plot: `{_shown(args.plot)}`.\n\n"
            f"{summary}\n\n"
            f"![best score vs epochs](../{_shown(args.plot)})\n\n"
            f"<details><summary>Per seed</summary>\n\n{per_seed(results)}\n\n</details>",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
