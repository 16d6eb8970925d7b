"""Each process's copy of every study's reference set, refreshed incrementally from the DB."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from oracle.core import store
from oracle.core.reference import ReferenceSet, history_array


@dataclass
class _Entry:
    reference: ReferenceSet = field(default_factory=ReferenceSet)
    seen_seq: int = 0
    checked_at: float = -1e18


class ReferenceCache:
    """At most `refresh_s` stale; a refresh reads only runs that joined since the last one."""

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, session: Session, study_pk: int) -> ReferenceSet:
        with self._lock:
            entry = self._entries.setdefault(study_pk, _Entry())
            now = time.monotonic()
            if now - entry.checked_at >= self.refresh_s:
                if store.reference_count(session, study_pk) > entry.seen_seq:
                    self._load(session, study_pk, entry)
                entry.checked_at = now
            return entry.reference

    def _load(self, session: Session, study_pk: int, entry: _Entry) -> None:
        new = store.reference_histories_since(session, study_pk, entry.seen_seq)
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
