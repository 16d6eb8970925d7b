"""The entry point a worker holds: where the Oracle is, how patiently to call it, and runs."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from oracle_client.callback import TrainingCallback
from oracle_client.errors import OracleUnavailable
from oracle_client.retry import RetryPolicy
from oracle_client.run import Run
from oracle_client.transport import Transport

log = logging.getLogger("oracle_client")


class Oracle:
    """A connection to the Oracle service.

    `url` and `token` default to ORACLE_URL and ORACLE_TOKEN. `timeout` bounds each HTTP
    attempt; `retries` and `budget` bound one operation (a report, say) in attempts and in
    seconds, waits included. With `fail_open` (the default) an unreachable service never
    stops training: reports answer `continue` with policy `fail-open`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 5,
        budget: float = 10.0,
        fail_open: bool = True,
    ) -> None:
        url = url or os.environ.get("ORACLE_URL")
        if not url:
            raise ValueError("no Oracle URL: pass url=... or set ORACLE_URL")
        if token is None:
            token = os.environ.get("ORACLE_TOKEN") or None
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, not {timeout}")
        self.url = url
        self.fail_open = fail_open
        self._transport = Transport(
            url, token, timeout=timeout, policy=RetryPolicy(retries=retries, budget_s=budget)
        )

    def __repr__(self) -> str:
        return f"Oracle({self.url!r}, fail_open={self.fail_open})"

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Oracle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start_run(
        self,
        study_id: str,
        max_epochs: int,
        config: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Register a run (PUT, so a retry cannot make two) and return it.

        The id is chosen here unless given. If the service cannot be reached, the run is
        returned unregistered (fail-open) and registers itself at its first report that
        gets through.
        """
        run = Run(
            self._transport,
            run_id=run_id or uuid.uuid4().hex,
            study_id=study_id,
            max_epochs=max_epochs,
            config=config,
            dataset=dataset,
            fail_open=self.fail_open,
        )
        try:
            run.register()
        except OracleUnavailable as e:
            if not self.fail_open:
                raise
            log.warning("oracle: run %s not registered yet, will retry: %s", run.run_id, e)
        return run

    # `with oracle.run(...) as run:` reads better than `with oracle.start_run(...)`.
    run = start_run

    def callback(
        self,
        study_id: str,
        max_epochs: int,
        config: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        run_id: str | None = None,
    ) -> TrainingCallback:
        """Start a run and return a callable `(epoch, mqe, te, dead) -> stop?` for a loop."""
        return TrainingCallback(self.start_run(study_id, max_epochs, config, dataset, run_id))

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The stored run with its checkpoints and decisions, as the service returns it."""
        answer: dict[str, Any] = self._transport.request("GET", f"/v1/runs/{run_id}")
        return answer
