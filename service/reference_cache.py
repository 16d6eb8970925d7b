"""Each process's copy of every study's policy, reference set and calibration evidence,
refreshed incrementally."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from core import store
from core.calibration import EvidenceSet, Margins, pooled, study_margins
from core.evidence import censored_runs, reference_facts
from core.features import encode_context
from core.policy import Predictor
from core.reference import ReferenceSet, Thresholds, history_array
from core.scoring import StudyPolicy, Weights

# At most this many runs join a study's set per call of `get` once it has been loaded: a
# refresh that finds more (the runs that finished together, a second after a rush of short
# trainings) loads the rest at the next calls, a part each, instead of holding the event loop
# for all of them at once. A run costs ~65 µs to load (its checkpoints' rows, its grid curve):
# 150 runs finished in the replay's first second, in each of four studies whose refreshes
# came due together, and that one batch held the loop ~25 ms (bench/RESULTS-service.md).
LOAD_MAX_RUNS = 32


# At most this many evidence runs are forecast by a new model per call of `margins` (~0.4 ms
# each): after a swap, a study's evidence is rebuilt a part per batch, not in one stall. A
# part is valid evidence too (the first runs by reference number: chosen blind to outcomes).
EVIDENCE_MAX_RUNS = 32


@dataclass(frozen=True)
class _EvidenceRun:
    """A reference run that is calibration evidence, as a model needs it to forecast it."""

    history: np.ndarray
    context: np.ndarray
    final: np.ndarray  # (3,) NaN where not finite


@dataclass
class _Evidence:
    """A study's evidence as one model (version, weights) forecast it: the first `done` runs."""

    key: tuple[str, Weights]
    forecast: EvidenceSet = field(default_factory=EvidenceSet)
    done: int = 0


@dataclass
class _Entry:
    reference: ReferenceSet = field(default_factory=ReferenceSet)
    policy: StudyPolicy = field(default_factory=StudyPolicy)
    evidence_runs: list[_EvidenceRun] = field(default_factory=list)
    evidence: _Evidence | None = None
    seen_seq: int = 0
    # The study's count at its last refresh; the set is behind while seen_seq < target.
    target: int = 0
    loaded: bool = False  # its first load (the whole set) is done
    checked_at: float = -1e18


class ReferenceCache:
    """At most `refresh_s` stale; a refresh is one primary-key read of the study, plus the
    runs that joined its reference set since the last refresh (never a scan of the study).

    A study's first load reads its whole set: a decision never compares with a part of it.
    After that, a refresh that finds many new runs loads them `load_max_runs` per call, at
    the calls that follow (the next batches), without waiting `refresh_s` between parts.
    """

    def __init__(
        self,
        refresh_s: float,
        load_max_runs: int = LOAD_MAX_RUNS,
        evidence_max_runs: int = EVIDENCE_MAX_RUNS,
    ) -> None:
        if load_max_runs < 1:
            raise ValueError(f"load_max_runs must be at least 1, not {load_max_runs}")
        if evidence_max_runs < 1:
            raise ValueError(f"evidence_max_runs must be at least 1, not {evidence_max_runs}")
        self.refresh_s = refresh_s
        self.load_max_runs = load_max_runs
        self.evidence_max_runs = evidence_max_runs
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, conn: Session | Connection, study_pk: int) -> tuple[ReferenceSet, StudyPolicy]:
        with self._lock:
            entry = self._entries.get(study_pk)
            if entry is None:  # not setdefault: that would build a new set on every call
                entry = self._entries[study_pk] = _Entry()
            now = time.monotonic()
            if now - entry.checked_at >= self.refresh_s:
                count, entry.policy = store.study_state(conn, study_pk)
                entry.target = max(entry.target, count)
                entry.reference.censored = censored_runs(conn, study_pk)
                entry.checked_at = now
            if entry.seen_seq < entry.target:
                self._load(conn, study_pk, entry)
            entry.loaded = True
            return entry.reference, entry.policy

    def margins(self, study_pk: int, policy: StudyPolicy, predictor: Predictor) -> Margins:
        """What the study's model stops may rest on (core.calibration.Margins): its own
        evidence, every loaded study's pooled, and the model's held-out calibration. Call
        after `get` for the study (its set is loaded)."""
        version = str(getattr(predictor, "version", ""))
        with self._lock:
            own = np.empty(0)
            parts = []
            for pk, entry in self._entries.items():
                evidence = self._forecast(entry, version, predictor)
                if evidence is None:
                    continue
                threshold = entry.reference.thresholds(entry.policy).final
                good = evidence.good(threshold, entry.policy.min_progress)
                parts.append(good)
                if pk == study_pk:
                    own = good
        scores = getattr(predictor, "heldout_scores", None)
        return study_margins(own, pooled(parts), policy.confidence, scores)

    def _forecast(self, entry: _Entry, version: str, predictor: Predictor) -> EvidenceSet | None:
        """The entry's evidence as this model forecasts it, a part more per call."""
        evidence_of = getattr(predictor, "evidence", None)
        if evidence_of is None or not entry.evidence_runs:
            return None
        key = (version, entry.policy.weights)
        state = entry.evidence
        if state is None or state.key != key:
            state = entry.evidence = _Evidence(key)
        if state.done < len(entry.evidence_runs):
            weights = entry.policy.weights
            vector = weights.vector()
            part = entry.evidence_runs[state.done : state.done + self.evidence_max_runs]
            state.forecast.add(
                evidence_of(
                    run.history,
                    vector,
                    float(weights.scores(run.final[None, :])[0]),
                    run.context,
                )
                for run in part
            )
            state.done += len(part)
        return state.forecast

    def invalidate(self, study_pk: int) -> None:
        """Re-read the study at its next use (its policy changed in this process)."""
        with self._lock:
            entry = self._entries.get(study_pk)
            if entry is not None:
                entry.checked_at = -1e18

    def _load(self, conn: Session | Connection, study_pk: int, entry: _Entry) -> None:
        limit = self.load_max_runs if entry.loaded else None
        new = store.reference_histories_since(conn, study_pk, entry.seen_seq, limit)
        facts = reference_facts(conn, study_pk, [seq for seq, _, rows, _ in new if rows])
        pairs = []
        for seq, max_epochs, rows, final in new:
            entry.seen_seq = max(entry.seen_seq, seq)
            if not rows:
                continue
            final_row = np.array(
                [np.nan if v is None else v for v in final.as_dict().values()], dtype=np.float64
            )
            history = history_array(rows, max_epochs)
            pairs.append((history, final_row))
            fact = facts.get(seq)
            if fact is not None and fact.unbiased:
                context = encode_context(fact.config, max_epochs)
                entry.evidence_runs.append(_EvidenceRun(history, context, final_row))
        entry.reference.extend(pairs)
        if limit is None or len(new) < limit:
            # Caught up. Numbers up to `target` were handed out by transactions that committed
            # before it was read, so every run holding one is loaded now. A number whose run
            # did not end (store.write_batch) is a gap: not asked again.
            entry.seen_seq = max(entry.seen_seq, entry.target)


@dataclass(frozen=True)
class StudyView:
    """What a decision of the study reads, the same for every checkpoint of a batch."""

    policy: StudyPolicy
    thresholds: Thresholds
    margins: Margins | None  # None: no model, or a decider that does not ask it


def study_view(
    cache: ReferenceCache, conn: Session | Connection, study_pk: int, predictor: Predictor | None
) -> StudyView:
    reference, policy = cache.get(conn, study_pk)
    thresholds = reference.thresholds(policy)
    margins = None
    if predictor is not None and policy.decider == "auto":
        margins = cache.margins(study_pk, policy, predictor)
    return StudyView(policy, thresholds, margins)
