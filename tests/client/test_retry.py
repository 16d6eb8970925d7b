"""RetryPolicy and Retry-After parsing: the arithmetic of waiting."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from oracle_client.retry import RetryPolicy, parse_retry_after


def test_backoff_grows_and_stays_within_its_jitter_band() -> None:
    policy = RetryPolicy(base_s=0.1, cap_s=100.0, rng=random.Random(7))
    for attempt in range(6):
        step = 0.1 * 2**attempt
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert all(step / 2 <= w <= step for w in waits)
        assert len(set(waits)) > 100  # jittered, not one value


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=2.0)
    assert max(policy.backoff(30) for _ in range(100)) <= 2.0


def test_after_waits_at_least_retry_after_and_spreads_a_little() -> None:
    policy = RetryPolicy(rng=random.Random(1))
    waits = [policy.after(3.0) for _ in range(100)]
    assert all(3.0 <= w <= 3.3 for w in waits)
    assert policy.after(0.0) == 0.0


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(budget_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_s=2.0, cap_s=1.0)


def test_parse_retry_after_reads_seconds() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0


def test_parse_retry_after_reads_http_dates() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert parse_retry_after(header, now=now) == 42.0
    past = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf"])
def test_parse_retry_after_ignores_what_it_cannot_read(value: str | None) -> None:
    assert parse_retry_after(value) is None
