"""When to try a call again and how long to wait: backoff with jitter, Retry-After, the budget."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# 503 is the service's "storage unavailable"; 502/504 are what a proxy in front of the
# replicas answers while one restarts; 429 asks us to slow down. A retry can fix all four.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    """Attempts after the first one."""
    budget_s: float = 10.0
    """Seconds one call may take in total, attempts and waits included."""
    base_s: float = 0.2
    cap_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, not {self.budget_s}")
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, not {self.base_s}, {self.cap_s}")

    def backoff(self, attempt: int) -> float:
        """Wait after failed attempt number `attempt` (0-based): exponential, capped, jittered.

        Equal jitter: half the step is fixed so waits still grow, half is random so that
        the workers cut off by one outage do not all come back in the same instant.
        """
        step = min(self.cap_s, self.base_s * 2.0**attempt)
        return step / 2 + self.rng.uniform(0, step / 2)

    def after(self, retry_after: float) -> float:
        """Wait for a response that said Retry-After: at least that, plus a little spread."""
        return retry_after + self.rng.uniform(0, min(1.0, retry_after / 10))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
