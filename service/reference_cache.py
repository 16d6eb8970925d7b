"""Each process's copy of every study's policy and reference set, refreshed incrementally."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from core import store
from core.reference import ReferenceSet, history_array
from core.scoring import StudyPolicy

# At most this many runs join a study's set per call of `get` once it has been loaded: a
# refresh that finds more (the runs that finished together, a second after a rush of short
# trainings) loads the rest at the next calls, a part each, instead of holding the event loop
# for all of them at once. A run costs ~65 µs to load (its checkpoints' rows, its grid curve):
# 150 runs finished in the replay's first second, in each of four studies whose refreshes
# came due together, and that one batch held the loop ~25 ms (bench/RESULTS-service.md).
LOAD_MAX_RUNS = 32


@dataclass
class _Entry:
    reference: ReferenceSet = field(default_factory=ReferenceSet)
    policy: StudyPolicy = field(default_factory=StudyPolicy)
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

    def __init__(self, refresh_s: float, load_max_runs: int = LOAD_MAX_RUNS) -> None:
        if load_max_runs < 1:
            raise ValueError(f"load_max_runs must be at least 1, not {load_max_runs}")
        self.refresh_s = refresh_s
        self.load_max_runs = load_max_runs
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
                entry.checked_at = now
            if entry.seen_seq < entry.target:
                self._load(conn, study_pk, entry)
            entry.loaded = True
            return entry.reference, entry.policy

    def invalidate(self, study_pk: int) -> None:
        """Re-read the study at its next use (its policy changed in this process)."""
        with self._lock:
            entry = self._entries.get(study_pk)
            if entry is not None:
                entry.checked_at = -1e18

    def _load(self, conn: Session | Connection, study_pk: int, entry: _Entry) -> None:
        limit = self.load_max_runs if entry.loaded else None
        new = store.reference_histories_since(conn, study_pk, entry.seen_seq, limit)
        pairs = []
        for seq, max_epochs, rows, final in new:
            entry.seen_seq = max(entry.seen_seq, seq)
            if not rows:
                continue
            final_row = np.array(
                [np.nan if v is None else v for v in final.as_dict().values()], dtype=np.float64
            )
            pairs.append((history_array(rows, max_epochs), final_row))
        entry.reference.extend(pairs)
        if limit is None or len(new) < limit:
            # Caught up. Numbers up to `target` were handed out by transactions that committed
            # before it was read, so every run holding one is loaded now. A number whose run
            # did not end (store.write_batch) is a gap: not asked again.
            entry.seen_seq = max(entry.seen_seq, entry.target)
