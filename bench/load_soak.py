"""The full soak: 64 workers for 60 s against real `oracle serve` processes, on SQLite and on
Postgres; afterwards every acknowledged checkpoint must be in the database exactly once with
the decision the worker heard. `--servers 2` runs two API processes on the same database.

    .venv/bin/python bench/load_soak.py --backend both --seconds 60 --workers 64
    .venv/bin/python bench/load_soak.py --backend both --seconds 60 --servers 2

Postgres comes from TEST_POSTGRES_URL (a scratch database is created and dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from core.schema import upgrade
from tests.load.harness import Server, lost_or_changed, run_swarm
from tests.scratch import postgres_database


@contextmanager
def scratch_database(backend: str, workdir: Path) -> Iterator[str]:
    """A migrated, empty database of `backend`, removed afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'soak.db'}"
        upgrade(url)
        yield url
        return
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        raise SystemExit("set TEST_POSTGRES_URL for the Postgres run")
    with postgres_database(base, "oracle_bench") as url:
        yield url


def soak(backend: str, seconds: float, workers: int, servers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, scratch_database(backend, Path(tmp)) as url:
        started = [Server(url, Path(tmp) / f"server{i}.log").start() for i in range(servers)]
        try:
            outcome = run_swarm(
                [s.url for s in started], duration_s=seconds, workers=workers, study="soak"
            )
        finally:
            for server in started:
                server.stop()
        logs = "".join(s.tail(10**8) for s in started)
        problems = lost_or_changed(outcome, url)
        return {
            "backend": backend,
            "servers": servers,
            "workers": workers,
            "seconds": seconds,
            **outcome.summary(),
            "errors": outcome.errors,
            "lost_or_changed": len(problems),
            "problems": problems[:5],
            "database_is_locked_in_logs": logs.count("database is locked"),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = [soak(b, args.seconds, args.workers, args.servers) for b in backends]
    for result in results:
        print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    failed = [r for r in results if r["errors"] or r["lost_or_changed"]]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
