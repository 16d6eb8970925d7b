"""One HTTP call to the Oracle, retried under a RetryPolicy, its failures turned into SDK errors.

Every call the SDK makes is idempotent (PUT of a client-chosen run id, a checkpoint that the
service answers again with its stored decision, a finish of the same status), so any of them
may be sent again after a timeout without doing anything twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from oracle_client.errors import OracleUnavailable, http_error
from oracle_client.retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger("oracle_client")

# Failures of the connection, not answers of the service: a retry may well succeed. Not
# httpx.UnsupportedProtocol or InvalidURL: a wrong URL stays wrong.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class Transport:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float,
        policy: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "oracle-client/0.1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.policy = policy
        self.timeout = timeout
        self._sleep = sleep
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers)

    def close(self) -> None:
        self._http.close()

    def deadline(self) -> float:
        """The monotonic time by which one operation, however many calls it makes, gives up."""
        return time.monotonic() + self.policy.budget_s

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        deadline: float | None = None,
    ) -> Any:
        """The parsed JSON answer; raises OracleUnavailable when the budget (or the given
        `deadline`, shared by the calls of one operation) runs out, or the typed
        OracleHTTPError for an error status that a retry cannot fix."""
        policy = self.policy
        if deadline is None:
            deadline = self.deadline()
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:  # a deadline shared with earlier calls of the same operation
                raise OracleUnavailable(f"the {policy.budget_s:g} s budget ran out")
            try:
                response = self._http.request(
                    method, path, json=body, timeout=max(0.001, min(self.timeout, remaining))
                )
            except _RETRYABLE_ERRORS as e:
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                wait = policy.backoff(attempt)
            else:
                status = response.status_code
                if status < 400:
                    return _json(response)
                detail = _detail(response)
                if status not in RETRYABLE_STATUSES:
                    raise http_error(method, str(response.url), status, detail)
                why = f"HTTP {status}: {detail}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                wait = policy.backoff(attempt) if retry_after is None else policy.after(retry_after)

            attempt += 1
            if attempt > policy.retries:
                raise OracleUnavailable(f"{why}; gave up after {attempt} attempts")
            if time.monotonic() + wait >= deadline:
                raise OracleUnavailable(
                    f"{why}; gave up after {attempt} attempts, the next one would pass "
                    f"the {policy.budget_s:g} s budget"
                )
            log.info("oracle %s %s: %s; retrying in %.2f s", method, path, why, wait)
            self._sleep(wait)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        # A proxy's HTML page, most likely: not the Oracle answering.
        raise OracleUnavailable(
            f"HTTP {response.status_code} with a body that is not JSON: {response.text[:200]!r}"
        ) from e


def _detail(response: httpx.Response) -> object:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(payload, dict) and "detail" in payload:
        return payload["detail"]
    return payload
