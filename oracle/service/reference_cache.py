"""Each process's copy of every study's policy and reference set, refreshed incrementally."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from oracle.core import store
from oracle.core.reference import ReferenceSet, history_array
from oracle.core.scoring import StudyPolicy


@dataclass
class _Entry:
    reference: ReferenceSet = field(default_factory=ReferenceSet)
    policy: StudyPolicy = field(default_factory=StudyPolicy)
    seen_seq: int = 0
    checked_at: float = -1e18


class ReferenceCache:
    """At most `refresh_s` stale; a refresh is one primary-key read of the study, plus the
    runs that joined its reference set since the last refresh (never a scan of the study)."""

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
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
                if count > entry.seen_seq:
                    self._load(conn, study_pk, entry)
                    # Numbers up to `count` were handed out by transactions that committed
                    # before it was read, so every run holding one is loaded now. A number
                    # whose run did not end (store.write_batch) is a gap: not asked again.
                    entry.seen_seq = max(entry.seen_seq, count)
                entry.checked_at = now
            return entry.reference, entry.policy

    def invalidate(self, study_pk: int) -> None:
        """Re-read the study at its next use (its policy changed in this process)."""
        with self._lock:
            entry = self._entries.get(study_pk)
            if entry is not None:
                entry.checked_at = -1e18

    def _load(self, conn: Session | Connection, study_pk: int, entry: _Entry) -> None:
        new = store.reference_histories_since(conn, study_pk, entry.seen_seq)
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
