"""bench/replay.py's command line (what it refuses, what it makes of what it takes), its latency
log, and bench/latency_windows.py, which reads that log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import latency_windows
from bench.latency_windows import by_window, read_log
from bench.replay import LATENCY_LOG_COLUMNS, parse_args, percentile
from bench.replay import main as replay_main


def test_both_policies_are_taken_in_the_order_given() -> None:
    args = parse_args(["--policy", "oracle,median", "--ignore-decisions"])
    assert args.policies == ["oracle", "median"] and args.ignore_decisions
    assert parse_args([]).policies == ["median"] and not parse_args([]).ignore_decisions


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("asha", "unknown 'asha'"),
        ("median,", "unknown ''"),
        ("median,median", "names a policy twice"),
    ],
)
def test_a_bad_policy_list_is_refused_with_what_is_wrong(
    policy: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--policy", policy])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_latency_windows_split_a_phase_by_when_each_request_was_sent() -> None:
    requests = [(0.1, 1.0), (0.2, 3.0), (0.7, 2.0), (1.5, 10.0), (6.0, 4.0)]
    rows = {w.label: w for w in by_window(requests, [0.5, 1, 2, 5])}
    assert list(rows) == ["all", "0-0.5", "0.5-1", "1-2", "5-6"]  # the empty 2-5 is left out
    assert rows["all"].requests == sum(w.requests for label, w in rows.items() if label != "all")
    assert rows["0-0.5"].requests == 2 and rows["0-0.5"].per_s == 4
    assert rows["0-0.5"].p50_ms == 2.0 and rows["0-0.5"].max_ms == 3.0
    assert rows["all"].p99_ms == percentile([1.0, 3.0, 2.0, 10.0, 4.0], 99)
    assert rows["5-6"].per_s == 1  # the last window ends at the last request sent


@pytest.mark.parametrize(
    ("edges", "message"),
    [("1,x", "seconds separated by commas"), ("0,1", "must be positive"), ("nan", "positive")],
)
def test_latency_windows_refuse_bad_edges_with_what_is_wrong(
    edges: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "l.csv"
    log.write_text(",".join(LATENCY_LOG_COLUMNS) + "\n")
    with pytest.raises(SystemExit) as exit_:
        latency_windows.main([str(log), "--edges", edges])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_the_latency_log_holds_every_checkpoint_request_of_both_phases(
    tmp_path: Path, data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real replay (uvicorn, SQLite): one row per checkpoint request the phase timed."""
    log = tmp_path / "latencies.csv"
    summary = tmp_path / "summary.json"
    args = ["--backend", "sqlite", "--workers", "4", "--runs", "12", "--repeat", "1"]
    args += ["--no-startup", "--data", str(data_file), "--json", str(summary)]
    assert replay_main([*args, "--latency-log", str(log)]) == 0
    phases = read_log(log)
    assert set(phases) == {("sqlite", "median", "4", "0", p) for p in ("real", "bare")}
    real, bare = (
        phases[("sqlite", "median", "4", "0", "real")],
        phases[("sqlite", "median", "4", "0", "bare")],
    )
    assert len(real) == len(bare) > 12  # the bare twin serves the same request mix
    (row,) = json.loads(summary.read_text())["rows"]
    assert percentile([latency for _, latency in real], 99) == pytest.approx(
        row["p99_ms"], abs=0.01
    )
    assert all(sent >= 0 and latency > 0 for sent, latency in real + bare)
    latency_windows.main([str(log)])
    assert "| sqlite median 4 #0 | real | all | " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("run,latency\n1,2\n", "is not a replay.py --latency-log CSV"),
        (",".join(LATENCY_LOG_COLUMNS) + "\nsqlite,median,4,0,real,x,1.0\n", "not a replay.py"),
    ],
)
def test_latency_windows_refuse_a_file_that_is_not_a_latency_log(
    content: str | None, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "l.csv"
    if content is not None:
        log.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        latency_windows.main([str(log)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_latency_log_in_a_missing_folder_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--latency-log", str(tmp_path / "nowhere" / "l.csv")])
    assert exit_.value.code == 2
    assert "no folder" in capsys.readouterr().err
    assert parse_args(["--latency-log", str(tmp_path / "l.csv")]).latency_log == tmp_path / "l.csv"
