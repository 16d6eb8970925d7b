"""How good a model is: prediction errors by target and progress, interval calibration, and a
decision backtest that replays held-out runs through the real policy code beside baselines.

Scores here are the README's: final MQE / the group's median final MQE + TE + 0.5 x dead, so
one figure means the same for every data set.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from core.calibration import (
    CONDITIONING_POLICIES,
    EvidenceSet,
    Margins,
    is_exploration,
    pooled,
    study_margins,
)
from core.forecast import BundlePredictor
from core.policy import Predictor, Situation, chain_for, decide
from core.reference import ReferenceSet
from core.scoring import StudyPolicy, Weights
from training.dataset import RunRecord, final_score

PROGRESS_POINTS = (0.1, 0.2, 0.3, 0.5)
TARGET_NAMES = ("mqe_normalized", "topographic_error", "dead_neuron_ratio")
# ASHA as in the README's table: rungs at 1/9 and 1/3 of the run (the last rung is the end).
ASHA_RUNGS = (1 / 9, 1 / 3)
ASHA_FACTOR = 3
# The origin project's rule looks at the score once, at a third of the run.
ORIGIN_PROGRESS = 1 / 3
# The recall the origin rule's threshold is tuned to keep, on the training runs.
ORIGIN_RECALL = 0.95
# Errors are measured on values capped here: real runs blow up to an MQE of 1e31 (finite), and
# one such run would decide every mean. Beyond 10x the group's median a run is lost either way.
ERROR_CAP = 10.0


def _weights_vector(w: Weights) -> np.ndarray:
    return np.array([w.mqe, w.topographic_error, w.dead_neuron_ratio])


# --- prediction errors and calibration -------------------------------------------------------


PredictorChoice = BundlePredictor | Callable[[RunRecord], BundlePredictor]


def _step_table(
    choice: PredictorChoice, runs: Sequence[RunRecord], weights: dict[str, Weights]
) -> dict[str, np.ndarray]:
    """One row per (run, checkpoint before the end): progress, errors, interval, truth.

    `choice` is one predictor, or a function giving each run its own (cross-validation).
    """
    rows: dict[str, list[Any]] = {k: [] for k in ("run", "progress", "err", "score", "lo", "hi")}
    for i, run in enumerate(runs):
        if not run.trainable:
            continue
        predictor = choice if isinstance(choice, BundlePredictor) else choice(run)
        mid = predictor.median
        lo_i = int(np.searchsorted(predictor.levels, 0.1))
        hi_i = int(np.searchsorted(predictor.levels, 0.9))
        w = _weights_vector(weights[run.group])
        truth = np.minimum(run.final * np.array([w[0], 1.0, 1.0]), ERROR_CAP)
        true_score = min(float(run.final @ w), ERROR_CAP)
        quantiles = predictor.quantiles_by_step(run.history, run.context)  # (n, 3, Q)
        scores = np.minimum(predictor.score_quantiles(quantiles, w), ERROR_CAP)  # (n, Q)
        for k in range(len(run.history)):
            if run.history[k, 0] >= 1.0:
                continue
            pred = np.minimum(quantiles[k, :, mid] * np.array([w[0], 1.0, 1.0]), ERROR_CAP)
            rows["run"].append(i)
            rows["progress"].append(run.history[k, 0])
            rows["err"].append(np.append(pred - truth, scores[k, mid] - true_score))
            rows["score"].append(true_score)
            rows["lo"].append(scores[k, lo_i] - true_score)
            rows["hi"].append(scores[k, hi_i] - true_score)
    return {k: np.array(v) for k, v in rows.items()}


def _errors(err: np.ndarray) -> dict[str, float]:
    if err.size == 0:
        return {}
    out = {}
    for j, name in enumerate((*TARGET_NAMES, "score")):
        out[f"{name}_mae"] = float(np.mean(np.abs(err[:, j])))
        out[f"{name}_rmse"] = float(np.sqrt(np.mean(err[:, j] ** 2)))
    # The typical run: blown-up maps (capped at ERROR_CAP) dominate the mean, not the median.
    out["score_median_ae"] = float(np.median(np.abs(err[:, -1])))
    return out


def _at_progress(table: dict[str, np.ndarray], point: float) -> np.ndarray:
    """Row indices of the prediction each run had at `point`: its last checkpoint before it."""
    chosen = []
    for run in np.unique(table["run"]):
        rows = np.flatnonzero((table["run"] == run) & (table["progress"] <= point + 1e-9))
        if rows.size:
            chosen.append(rows[-1])
    return np.array(chosen, dtype=int)


def prediction_report(
    predictor: PredictorChoice, runs: Sequence[RunRecord], weights: dict[str, Weights]
) -> dict[str, Any]:
    """MAE/RMSE per target and of the score, overall and at 10/20/30/50% progress; and the
    share of true final scores inside the 80% interval (calibration)."""
    table = _step_table(predictor, runs, weights)
    if table["err"].size == 0:
        return {"n_runs": 0}
    inside = (table["lo"] <= 0) & (table["hi"] >= 0)
    decision = table["progress"] >= 0.1
    report: dict[str, Any] = {
        "n_runs": len(np.unique(table["run"])),
        "overall": _errors(table["err"]),
        "coverage_80": float(np.mean(inside[decision])),
        "by_progress": {},
    }
    for point in PROGRESS_POINTS:
        rows = _at_progress(table, point)
        if rows.size:
            entry = _errors(table["err"][rows])
            entry["coverage_80"] = float(np.mean(inside[rows]))
            entry["n_runs"] = int(rows.size)
            report["by_progress"][f"{point:.0%}"] = entry
    return report


def fit_interval_scale(
    predictor: BundlePredictor,
    runs: Sequence[RunRecord],
    weights: dict[str, Weights],
    coverage: float,
) -> float:
    """The factor on the quantiles' spread that puts `coverage` of true finals in the 80%
    interval at decision time (progress >= 0.1), on runs the model did not train on."""
    saved = predictor.interval_scale
    predictor.interval_scale = 1.0
    try:
        table = _step_table(predictor, runs, weights)
    finally:
        predictor.interval_scale = saved
    if table["err"].size == 0:
        return 1.0
    decision = table["progress"] >= 0.1
    miss = table["err"][decision, -1]  # predicted median - truth
    lo, hi = table["lo"][decision] - miss, table["hi"][decision] - miss  # spreads around median
    # The scale each sample needs to fall inside: truth above the median needs hi, else lo.
    need = np.where(miss <= 0, -miss / np.maximum(hi, 1e-9), miss / np.maximum(-lo, 1e-9))
    return float(np.clip(np.quantile(need, coverage), 0.05, 20.0))


# --- the decision backtest -------------------------------------------------------------------


class Decider(Protocol):
    name: str

    def stops(self, run: RunRecord, k: int) -> bool:
        """Whether the run is stopped at its checkpoint k (its first k + 1 rows seen)."""
        ...

    def finished(self, run: RunRecord) -> None:
        """The run completed at max_epochs: it joins what later runs are compared with."""
        ...


class ChainDecider:
    """The service's own policy chain over a study = one group of runs, with what the service
    keeps beside it: each study's reference set (stopped runs counted as censored), its
    exploration runs, and the evidence that calibrates the model's stops (core.calibration),
    pooled over the groups as the service pools its studies."""

    def __init__(
        self,
        name: str,
        decider: str,
        policies: dict[str, StudyPolicy],
        predictor_for: Callable[[RunRecord], Predictor | None] = lambda run: None,
    ) -> None:
        self.name = name
        self.chain = chain_for(decider)
        self.policies = policies
        self.predictor_for = predictor_for
        self.references: dict[str, ReferenceSet] = {}
        self.evidence: dict[str, EvidenceSet] = {}
        self.conditioned: set[str] = set()  # runs a policy that can stop them decided
        self.verdicts: Counter[str] = Counter()  # decisions by the policy that made them

    def stops(self, run: RunRecord, k: int) -> bool:
        policy = self.policies[run.group]
        reference = self.references.setdefault(run.group, ReferenceSet())
        thresholds = reference.thresholds(policy)
        predictor = self.predictor_for(run)
        margins = None
        if predictor is not None:
            margins = self.margins(run.group, thresholds.final, predictor)
        situation = Situation(
            epoch=int(run.epochs[k]),
            max_epochs=run.max_epochs,
            history=run.history[: k + 1],
            policy=policy,
            thresholds=thresholds,
            predictor=predictor,
            context=run.context,
            margins=margins,
            exploration=is_exploration(run.run_id, policy.exploration),
        )
        verdict = decide(self.chain, situation)
        self.verdicts[verdict.policy] += 1
        if verdict.policy in CONDITIONING_POLICIES:
            self.conditioned.add(run.run_id)
        if verdict.action == "stop":
            reference.censored += 1
            return True
        return False

    def margins(self, group: str, threshold: float, predictor: Predictor) -> Margins:
        policy = self.policies[group]
        own = self._good(group, threshold)
        parts = [own]
        for other, reference in self.references.items():
            if other != group and other in self.evidence:
                parts.append(self._good(other, reference.thresholds(self.policies[other]).final))
        scores = getattr(predictor, "heldout_scores", None)
        return study_margins(own, pooled(parts), policy.confidence, scores)

    def _good(self, group: str, threshold: float) -> np.ndarray:
        evidence = self.evidence.get(group)
        if evidence is None:
            return np.empty(0)
        return evidence.good(threshold, self.policies[group].min_progress)

    def finished(self, run: RunRecord) -> None:
        self.references.setdefault(run.group, ReferenceSet()).extend([(run.history, run.final)])
        if run.run_id in self.conditioned:
            return
        predictor = self.predictor_for(run)
        if isinstance(predictor, BundlePredictor):
            weights = self.policies[run.group].weights
            score = float(weights.scores(run.final[None, :])[0])
            evidence = predictor.evidence(run.history, _weights_vector(weights), score, run.context)
            self.evidence.setdefault(run.group, EvidenceSet()).add([evidence])


def _diverged_at(run: RunRecord, k: int) -> bool:
    """What the service's guard stops on, for the baselines outside its chain."""
    return not bool(np.all(np.isfinite(run.history[k, 1:4])))


def _score_at(run: RunRecord, k: int, weights: Weights) -> float:
    return float(weights.scores(run.history[k : k + 1, 1:4])[0])


class AshaDecider:
    """Asynchronous successive halving (Optuna's SuccessiveHalvingPruner promotion rule) at
    rungs of relative progress: continue past a rung only in the top 1/factor so far."""

    name = "asha"

    def __init__(self, weights: dict[str, Weights]) -> None:
        self.weights = weights
        self.rungs: dict[tuple[str, int], list[float]] = {}

    def stops(self, run: RunRecord, k: int) -> bool:
        if _diverged_at(run, k):
            return True
        progress = run.history[k, 0]
        before = run.history[k - 1, 0] if k else -1.0
        for r, rung in enumerate(ASHA_RUNGS):
            if before < rung <= progress:  # the first checkpoint at or past this rung
                value = _score_at(run, k, self.weights[run.group])
                competing = self.rungs.setdefault((run.group, r), [])
                competing.append(value)
                ranked = sorted(competing)
                cut = max(len(ranked) // ASHA_FACTOR - 1, 0)
                if value > ranked[cut]:
                    return True
        return False

    def finished(self, run: RunRecord) -> None:
        return None


class OriginDecider:
    """The origin project's rule: at a third of the run, stop if the score is above a fixed
    threshold (tuned beforehand on training runs)."""

    name = "origin"

    def __init__(self, weights: dict[str, Weights], threshold: float) -> None:
        self.weights = weights
        self.threshold = threshold

    def stops(self, run: RunRecord, k: int) -> bool:
        if _diverged_at(run, k):
            return True
        before = run.history[k - 1, 0] if k else -1.0
        if before < ORIGIN_PROGRESS <= run.history[k, 0]:
            return _score_at(run, k, self.weights[run.group]) > self.threshold
        return False

    def finished(self, run: RunRecord) -> None:
        return None


def _origin_point(run: RunRecord) -> int | None:
    hits = np.flatnonzero(run.history[:, 0] >= ORIGIN_PROGRESS)
    return int(hits[0]) if hits.size else None


def tune_origin_threshold(runs: Sequence[RunRecord], weights: dict[str, Weights]) -> float:
    """The lowest threshold (most savings) that keeps ORIGIN_RECALL of the best 10%."""
    runs = [r for r in runs if r.trainable and r.group in weights]
    finals = np.array([final_score(r, weights) for r in runs])
    best = finals <= np.quantile(finals, 0.1)
    at_third = []
    for run in runs:
        k = _origin_point(run)
        at_third.append(_score_at(run, k, weights[run.group]) if k is not None else -np.inf)
    values = np.array(at_third)
    for candidate in np.sort(values[np.isfinite(values)]):
        if np.mean(values[best] <= candidate) >= ORIGIN_RECALL:
            return float(candidate)
    return math.inf


@dataclass(frozen=True)
class BacktestResult:
    policy: str
    epochs_saved: float
    recall_best10: float
    recall_best25: float
    # Per group: best kept final score - best final score; None when no run of it was kept.
    regret: dict[str, float | None]
    accuracy: float  # stopped <=> final worse than the group's median final score
    n_runs: int
    n_stopped: int

    def utility(self, recall_penalty: float) -> float:
        """One figure for the gate: compute saved, minus a price for every lost top run."""
        return self.epochs_saved - recall_penalty * (1.0 - self.recall_best10)


def arrival_order(runs: Sequence[RunRecord], seed: int) -> list[RunRecord]:
    order = np.random.default_rng(seed).permutation(len(runs))
    return [runs[i] for i in order]


def replay(
    decider: Decider, runs: Sequence[RunRecord], weights: dict[str, Weights]
) -> BacktestResult:
    """Feed the runs in the given order, checkpoint by checkpoint, through one decider."""
    used = np.zeros(len(runs))
    planned = np.array([r.max_epochs for r in runs], dtype=np.float64)
    stopped = np.zeros(len(runs), dtype=bool)
    for i, run in enumerate(runs):
        used[i] = run.max_epochs
        for k in range(len(run.history)):
            if decider.stops(run, k):
                stopped[i] = True
                used[i] = int(run.epochs[k])
                break
        if not stopped[i] and run.trainable:
            decider.finished(run)
    scores = np.array([final_score(r, weights) for r in runs])
    ranked = np.where(np.isfinite(scores), scores, np.inf)

    def recall(share: float) -> float:
        n_best = max(1, math.ceil(share * len(runs)))
        best = np.argsort(ranked, kind="stable")[:n_best]
        return float(np.mean(~stopped[best]))

    regret, truth = {}, np.zeros(len(runs), dtype=bool)
    groups = np.array([r.group for r in runs])
    for group in np.unique(groups):
        members = groups == group
        kept = ranked[members & ~stopped]
        gap = float(kept.min() - ranked[members].min()) if kept.size else None
        # inf - inf (a group of diverged runs only) has no regret to speak of either.
        regret[str(group)] = gap if gap is not None and math.isfinite(gap) else None
        truth[members] = ranked[members] > np.median(ranked[members])
    return BacktestResult(
        policy=decider.name,
        epochs_saved=float(1.0 - used.sum() / planned.sum()),
        recall_best10=recall(0.10),
        recall_best25=recall(0.25),
        regret=regret,
        accuracy=float(np.mean(stopped == truth)),
        n_runs=len(runs),
        n_stopped=int(stopped.sum()),
    )


def backtest(
    runs: Sequence[RunRecord],
    weights: dict[str, Weights],
    predictor_for: Callable[[RunRecord], Predictor | None],
    origin_threshold: float,
    seed: int,
    policy: StudyPolicy | None = None,
) -> dict[str, BacktestResult]:
    """The oracle (chain 'auto' with the model) beside never-stop, the median rule, ASHA and
    the origin rule, all on the same runs in the same seeded arrival order."""
    ordered = arrival_order(runs, seed)
    base = policy or StudyPolicy()
    policies = {g: base.model_copy(update={"weights": w}) for g, w in weights.items()}
    deciders: list[Decider] = [
        ChainDecider("oracle", "auto", policies, predictor_for),
        ChainDecider("never", "never", policies),
        ChainDecider("median", "median", policies),
        AshaDecider(weights),
        OriginDecider(weights, origin_threshold),
    ]
    return {d.name: replay(d, ordered, weights) for d in deciders}


def backtest_dict(results: dict[str, BacktestResult]) -> dict[str, dict[str, Any]]:
    return {name: asdict(result) for name, result in results.items()}


def format_report(prediction: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    """A readable report (markdown) of the figures in a manifest."""
    lines = ["| policy | epochs saved | best 10% kept | best 25% kept | max regret | accuracy |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['epochs_saved']:.1%} | {r['recall_best10']:.1%} | "
            f"{r['recall_best25']:.1%} | {_max_regret(r['regret'])} | {r['accuracy']:.1%} |"
        )
    lines.append("")
    lines.append(
        "| progress | score MAE | score median AE | score RMSE | MQE/median MAE | TE MAE "
        "| dead MAE | in 80% interval |"
    )
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [("all", prediction.get("overall", {}), prediction.get("coverage_80"))]
    rows += [(k, v, v.get("coverage_80")) for k, v in prediction.get("by_progress", {}).items()]
    for label, e, coverage in rows:
        if not e:
            continue
        lines.append(
            f"| {label} | {e['score_mae']:.4f} | {e.get('score_median_ae', math.nan):.4f} "
            f"| {e['score_rmse']:.4f} | "
            f"{e['mqe_normalized_mae']:.4f} | {e['topographic_error_mae']:.4f} | "
            f"{e['dead_neuron_ratio_mae']:.4f} | {coverage:.1%} |"
        )
    return "\n".join(lines)


def _max_regret(regret: dict[str, float | None]) -> str:
    if any(v is None for v in regret.values()):
        return "a group lost every run"
    return f"{max((v for v in regret.values() if v is not None), default=0.0):.4f}"
