"""What the database holds for a study's calibration (core.calibration): which of its reference
runs are unbiased evidence, with the configurations their forecasts read, and how many of its
runs were stopped (censored: counted worse than any in its threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from core.calibration import CONDITIONING_POLICIES
from core.tables import Checkpoint, Run


@dataclass(frozen=True)
class RunFacts:
    """Of one reference run: what its forecasts read, and whether it is evidence."""

    config: dict[str, Any] | None
    unbiased: bool  # no decision of a policy that could stop it on its metrics


def reference_facts(
    conn: Session | Connection, study_pk: int, seqs: Sequence[int]
) -> dict[int, RunFacts]:
    """By reference number: the configuration and the unbiased flag of those runs of a study.
    Two reads of the runs' keys and of their checkpoints' primary key, 500 runs at a time."""
    out: dict[int, RunFacts] = {}
    for start in range(0, len(seqs), 500):
        chunk = list(seqs[start : start + 500])
        runs = conn.execute(
            select(Run.pk, Run.reference_seq, Run.config).where(
                Run.study_pk == study_pk, Run.reference_seq.in_(chunk)
            )
        ).all()
        pks = [r.pk for r in runs]
        conditioned = set(
            conn.execute(
                select(Checkpoint.run_pk)
                .where(Checkpoint.run_pk.in_(pks), Checkpoint.policy.in_(CONDITIONING_POLICIES))
                .distinct()
            ).scalars()
        )
        for r in runs:
            config = r.config if isinstance(r.config, dict) else None
            out[int(r.reference_seq)] = RunFacts(config, r.pk not in conditioned)
    return out


def censored_runs(conn: Session | Connection, study_pk: int) -> int:
    """How many of the study's runs ended stopped: their finals are unknown (a walk of the
    (study_pk, pk) index's runs of the study)."""
    count = conn.execute(
        select(func.count())
        .select_from(Run)
        .where(Run.study_pk == study_pk, Run.status == "stopped")
    ).scalar()
    return int(count or 0)
