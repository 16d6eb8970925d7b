"""Where in a replay its latency tail is: each phase's checkpoint requests by when they were sent.

    python bench/replay.py --backend sqlite --workers 64 --runs 300 --pace 1 --latency-log l.csv
    python bench/latency_windows.py l.csv [--edges 0.5,1,2,5]

At the training pace (`--pace 1`) the load is not steady: the 64 workers start together, most
of the recorded trainings last a second or two, so most requests come in the first seconds,
and the phase ends with a few long runs. A phase's p99 is then made in its first seconds.
For each trial and phase (real service, bare twin) this prints, per window of time since the
phase began: the requests sent in it, their rate, and their p50, p99 and maximum latency.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.replay import percentile


@dataclass(frozen=True)
class Window:
    label: str  # "all", or "from-to" seconds since the phase's start
    requests: int
    per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def by_window(requests: Sequence[tuple[float, float]], edges: Sequence[float]) -> list[Window]:
    """`requests` ((sent s, latency ms) each) as a whole, then per window between `edges`
    (seconds from the phase's start; the last window runs to the last request sent)."""
    end = max(sent for sent, _ in requests)
    bounds = [0.0, *sorted(edges), float("inf")]
    spans = [(0.0, float("inf"), "all")]
    spans += [(lo, hi, f"{lo:g}-{min(hi, end):.3g}") for lo, hi in itertools.pairwise(bounds)]
    out = []
    for lo, hi, label in spans:
        latencies = [latency for sent, latency in requests if lo <= sent < hi]
        if latencies:
            seconds = max(1e-9, min(hi, end) - lo)
            out.append(
                Window(
                    label,
                    len(latencies),
                    len(latencies) / seconds,
                    percentile(latencies, 50),
                    percentile(latencies, 99),
                    max(latencies),
                )
            )
    return out


def read_log(path: Path) -> dict[tuple[str, ...], list[tuple[float, float]]]:
    """The log's requests by trial and phase, in the order they appear."""
    phases: dict[tuple[str, ...], list[tuple[float, float]]] = defaultdict(list)
    with path.open(newline="") as source:
        for row in csv.DictReader(source):
            key = (row["backend"], row["policy"], row["workers"], row["repeat"], row["phase"])
            phases[key].append((float(row["sent_s"]), float(row["latency_ms"])))
    return phases


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="a CSV from replay.py --latency-log")
    parser.add_argument(
        "--edges", default="0.5,1,2,5", help="window edges, seconds from the phase's start"
    )
    args = parser.parse_args(argv)
    try:
        edges = [float(e) for e in args.edges.split(",")]
    except ValueError:
        parser.error(f"--edges takes seconds separated by commas, not {args.edges!r}")
    if any(not e > 0 for e in edges):
        parser.error(f"--edges must be positive seconds, not {args.edges!r}")
    try:
        phases = read_log(args.log)
    except OSError as e:
        parser.error(f"cannot read {args.log}: {e.strerror or e}")
    except (KeyError, ValueError) as e:
        parser.error(f"{args.log} is not a replay.py --latency-log CSV ({type(e).__name__}: {e})")
    print("| trial | phase | window s | requests | per s | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (backend, policy, workers, repeat, phase), requests in phases.items():
        for w in by_window(requests, edges):
            print(
                f"| {backend} {policy} {workers} #{repeat} | {phase} | {w.label} | {w.requests} "
                f"| {w.per_s:.0f} | {w.p50_ms:.2f} | {w.p99_ms:.2f} | {w.max_ms:.1f} |"
            )


if __name__ == "__main__":
    main()
