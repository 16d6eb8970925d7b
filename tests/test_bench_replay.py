"""bench/replay.py's command line: what it refuses, and what it makes of what it takes."""

from __future__ import annotations

import pytest

from bench.replay import parse_args


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
