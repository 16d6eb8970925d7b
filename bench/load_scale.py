"""Does the checkpoint endpoint slow down as the tables grow? Seeds 10,000 and then 1,000,000
stored checkpoints with a bulk loader (COPY on Postgres, executemany on SQLite, in batches),
measures the checkpoint endpoint's p50 against a real `oracle serve` at each size, and prints
the Postgres plans of the reference-set queries and of the checkpoint write path.

    TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/load_scale.py --backend postgres --sizes 10000,1000000

Seeded runs are completed at max_epochs, 200 to a study (so each study's reference set is
the same size at both scales: what grows is the tables, as it does with many studies).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, event, select, text
from sqlalchemy.orm import Session

from bench.load_soak import scratch_database
from core import store
from core.db import normalize_url
from core.scoring import StudyPolicy
from core.tables import Run, Study
from tests.load.harness import Server, lost_or_changed, metrics_at, run_swarm

CHECKPOINTS_PER_RUN = 50
RUNS_PER_STUDY = 200
MEASURED_STUDY = "scale-0"
BATCH_RUNS = 2_000
NOW = "2026-11-28 00:00:00+00"
CHECKPOINT_COLUMNS = (
    "run_pk, epoch, progress, mqe, topographic_error, dead_neuron_ratio, wall_s, received_at, "
    "action, policy, reason"
)


def _runs_needed(checkpoints: int) -> int:
    return checkpoints // CHECKPOINTS_PER_RUN


def _checkpoint_rows(run_pk: int) -> list[tuple[Any, ...]]:
    rows = []
    for epoch in range(1, CHECKPOINTS_PER_RUN + 1):
        m = metrics_at(epoch, run_pk)
        rows.append(
            (
                run_pk,
                epoch,
                epoch / CHECKPOINTS_PER_RUN,
                m["mqe"],
                m["topographic_error"],
                m["dead_neuron_ratio"],
                0.01 * epoch,
                NOW,
                "continue",
                "warmup",
                "seeded",
            )
        )
    return rows


def seed(url: str, total_checkpoints: int) -> float:
    """Grow the tables to `total_checkpoints` (adds only what is missing); returns seconds."""
    started = time.perf_counter()
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        have_runs = conn.execute(text("SELECT COUNT(*) FROM runs")).scalar_one()
        have_studies = conn.execute(text("SELECT COUNT(*) FROM studies")).scalar_one()
    want_runs = _runs_needed(total_checkpoints)
    policy = json.dumps(StudyPolicy().model_dump(mode="json"))
    want_studies = -(-want_runs // RUNS_PER_STUDY)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        postgres = engine.dialect.name == "postgresql"
        p = "%s" if postgres else "?"
        cursor.executemany(
            f"INSERT INTO studies (pk, study_id, description, policy, reference_runs, "
            f"created_at, updated_at) VALUES ({p}, {p}, NULL, {p}, {p}, {p}, {p})",
            [
                (pk, f"scale-{pk - 1}", policy, RUNS_PER_STUDY, NOW, NOW)
                for pk in range(have_studies + 1, want_studies + 1)
            ],
        )
        for first in range(have_runs + 1, want_runs + 1, BATCH_RUNS):
            pks = range(first, min(first + BATCH_RUNS, want_runs + 1))
            runs = []
            for pk in pks:
                study_pk = (pk - 1) // RUNS_PER_STUDY + 1
                last = metrics_at(CHECKPOINTS_PER_RUN, pk)
                runs.append(
                    (pk, f"seed-{pk}", study_pk, CHECKPOINTS_PER_RUN, "completed",
                     CHECKPOINTS_PER_RUN, CHECKPOINTS_PER_RUN, last["mqe"],
                     last["topographic_error"], last["dead_neuron_ratio"],
                     (pk - 1) % RUNS_PER_STUDY + 1, NOW, NOW)
                )  # fmt: skip
            cursor.executemany(
                "INSERT INTO runs (pk, run_id, study_pk, max_epochs, status, last_epoch, "
                "n_checkpoints, final_mqe, final_topographic_error, final_dead_neuron_ratio, "
                f"reference_seq, created_at, finished_at) VALUES ({', '.join([p] * 13)})",
                runs,
            )
            rows = [row for pk in pks for row in _checkpoint_rows(pk)]
            if postgres:
                buffer = io.StringIO()
                for row in rows:
                    buffer.write("\t".join(str(v) for v in row) + "\n")
                with cursor.copy(f"COPY checkpoints ({CHECKPOINT_COLUMNS}) FROM STDIN") as copy:
                    copy.write(buffer.getvalue())
            else:
                marks = ", ".join("?" * 11)
                cursor.executemany(
                    f"INSERT INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES ({marks})", rows
                )
            raw.commit()
        if postgres:
            for table in ("studies", "runs"):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), "
                    f"(SELECT MAX(pk) FROM {table}))"
                )
            raw.commit()
            cursor.execute("ANALYZE")
        else:
            cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
    return time.perf_counter() - started


def measure(url: str, workdir: Path, seconds: float, workers: int, tag: str) -> dict[str, Any]:
    server = Server(url, workdir / f"server-{tag}.log").start()
    try:
        run_swarm([server.url], duration_s=3, workers=workers, study=MEASURED_STUDY, prefix="warm")
        outcome = run_swarm(
            [server.url], duration_s=seconds, workers=workers, study=MEASURED_STUDY, prefix=tag
        )
    finally:
        server.stop()
    assert not lost_or_changed(outcome, url)
    return {**outcome.summary(), "errors": outcome.errors}


def explain(url: str) -> dict[str, str]:
    """The plan of every statement of the reference-set reads and of the write path, captured
    from the store functions themselves (EXPLAIN ANALYZE for reads); writes are rolled back."""
    engine = create_engine(normalize_url(url))
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE")):
            captured.append((statement, params))

    plans: dict[str, str] = {}
    with Session(engine) as session:
        study = session.scalar(select(Study).where(Study.study_id == MEASURED_STUDY))
        assert study is not None
        run = session.scalar(select(Run).where(Run.study_pk == study.pk).order_by(Run.pk.desc()))
        assert run is not None
        run_id = run.run_id
        steps = {
            "study_state": lambda: store.study_state(session, study.pk),
            "reference_histories_since": lambda: store.reference_histories_since(
                session, study.pk, RUNS_PER_STUDY - 5
            ),
            "get_run": lambda: store.get_run(session, run.run_id),
            "find_checkpoint": lambda: store.find_checkpoint(session, run.pk, 3),
            "history_of": lambda: store.history_of(session, run.pk),
        }
        for name, step in steps.items():
            captured.clear()
            event.listen(engine, "before_cursor_execute", capture)
            session.expire_all()
            step()
            event.remove(engine, "before_cursor_execute", capture)
            for i, (statement, params) in enumerate(captured):
                plans[f"{name}#{i}"] = _plan(session, statement, params)
        session.rollback()
    # the write: the guarded run update and the checkpoint insert, rolled back
    with Session(engine) as session:
        writing = session.scalar(select(Run).where(Run.run_id == run_id))
        assert writing is not None
        writing.status = "running"
        session.flush()
        captured.clear()
        event.listen(engine, "before_cursor_execute", capture)
        store.insert_checkpoint(
            session,
            writing,
            {"epoch": CHECKPOINTS_PER_RUN + 1, "progress": 1.0, "mqe": 1.0,
             "topographic_error": 0.1, "dead_neuron_ratio": 0.1, "wall_s": None,
             "action": "continue", "policy": "warmup", "reason": "bench", "received_at": NOW},
        )  # fmt: skip
        event.remove(engine, "before_cursor_execute", capture)
        for i, (statement, params) in enumerate(captured):
            plans[f"insert_checkpoint#{i}"] = _plan(session, statement, params)
        session.rollback()
    engine.dispose()
    return plans


def _plan(session: Session, statement: str, params: Any) -> str:
    conn = session.connection()
    # a write already ran once when it was captured: its plan is shown without running it
    reads = statement.lstrip().upper().startswith("SELECT")
    options = "ANALYZE, COSTS OFF, TIMING OFF" if reads else "COSTS OFF"
    rows = conn.exec_driver_sql(f"EXPLAIN ({options}) {statement}", params)
    return "\n".join(r[0] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--sizes", default="10000,1000000", help="checkpoints to seed, in order")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"backend": args.backend, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp, scratch_database(args.backend, Path(tmp)) as url:
        for size in sizes:
            took = seed(url, size)
            figures = measure(url, Path(tmp), args.seconds, args.workers, f"s{size}")
            results["sizes"][size] = {"seed_s": round(took, 1), **figures}
            print(json.dumps({"checkpoints": size, **results["sizes"][size]}), flush=True)
        if args.backend == "postgres":
            results["plans"] = explain(url)
            for name, plan in results["plans"].items():
                print(f"--- {name}\n{plan}")
            scans = [n for n, p in results["plans"].items() if "Seq Scan on checkpoints" in p
                     or "Seq Scan on runs" in p]  # fmt: skip
            results["full_scans"] = scans
            print("full scans of runs/checkpoints:", scans or "none")
    first, last = (results["sizes"][s]["checkpoint_p50_ms"] for s in (sizes[0], sizes[-1]))
    results["p50_ratio"] = round(last / first, 2)
    print(f"p50 at {sizes[-1]:,} / p50 at {sizes[0]:,} = {results['p50_ratio']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
