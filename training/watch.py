"""The scheduled trainer: retrain when enough new finished runs arrived, or every S seconds.

It runs in its own process, talks to the service only through the database, and survives
its own failures (a failed retraining is logged and tried again at the next occasion).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.tables import ModelVersion
from training import dataset, pipeline, publish
from training.config import TrainConfig

log = structlog.get_logger()
# How often the loop looks at the database; retraining itself is far rarer.
POLL_S = 30.0
# Fewer finished runs than this give each cross-fitted fold too little to learn or test on.
MIN_RUNS = 20


def last_snapshot_pk(session: Session) -> int:
    """The newest run any version (published or rejected) was trained on: rejected versions
    count, or a rejected model's data would be retrained on forever."""
    manifest = session.scalar(select(ModelVersion.manifest).order_by(ModelVersion.pk.desc()))
    if not manifest:
        return 0
    return int(manifest.get("data_snapshot", {}).get("max_run_pk", 0))


def retrain_once(
    reads: sessionmaker[Session],
    writes: sessionmaker[Session],
    config: TrainConfig,
    log_dir: Path,
) -> publish.GateResult | None:
    """One retraining from the database; reads never hold SQLite's write lock for long."""
    with reads() as session:
        runs, snapshot = dataset.load_database(session, config.max_runs, config.censored)
        active = publish.active_model(session)
    n_finished = sum(r.trainable for r in runs)
    if n_finished < MIN_RUNS:
        log.info("retrain_skipped", reason=f"{n_finished} finished runs; {MIN_RUNS} are needed")
        return None
    candidate = pipeline.run(
        config,
        runs,
        snapshot,
        log_dir / time.strftime("%Y%m%dT%H%M%S"),
        active=active.bundle if active else None,
    )
    with writes.begin() as session:
        return publish.publish(session, candidate, config, active)


def watch(
    reads: sessionmaker[Session],
    writes: sessionmaker[Session],
    config: TrainConfig,
    log_dir: Path,
    interval_s: float,
    min_new_runs: int,
    max_cycles: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Loop until `max_cycles` retrainings were attempted (forever when None); returns it.

    Every `interval_s` it retrains if any run finished since the last version (retraining on
    the same data would only reproduce it); at once when `min_new_runs` did. A failure waits
    a full interval before the next attempt, so a broken job does not spin.
    """
    attempts = 0
    last = clock()
    while max_cycles is None or attempts < max_cycles:
        try:
            with reads() as session:
                new = dataset.count_finished(session, last_snapshot_pk(session))
            due = clock() - last >= interval_s
            if new >= min_new_runs or (due and new > 0):
                log.info("retrain_started", new_runs=new, due=due)
                attempts += 1
                last = clock()
                retrain_once(reads, writes, config, log_dir)
        except Exception as e:  # the scheduled job must outlive a failed retraining
            log.exception("retrain_failed", error=str(e))
            sleep(interval_s)
            last = clock()
            continue
        if max_cycles is not None and attempts >= max_cycles:
            break
        sleep(min(POLL_S, interval_s))
    return attempts
