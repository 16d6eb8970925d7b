"""Polls the registry's active alias and hot-swaps the predictor: load, check, warm up, swap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog
from sqlalchemy.orm import Session, sessionmaker

from core import registry
from core.policy import Predictor
from service import metrics
from service.serving.holder import ModelHolder

log = structlog.get_logger()

Loader = Callable[[str, dict[str, Any], bytes], Predictor]

# A short, plausible history: a warm-up prediction must succeed before a swap.
WARMUP_HISTORY = np.array(
    [[0.05, 1.2, 0.30, 0.20], [0.10, 1.0, 0.25, 0.18], [0.20, 0.9, 0.22, 0.15]]
)


class Reloader:
    def __init__(
        self, sessions: sessionmaker[Session], holder: ModelHolder, loader: Loader, every_s: float
    ) -> None:
        self.sessions = sessions
        self.holder = holder
        self.loader = loader
        self.every_s = every_s
        self.failed_version: str | None = None

    def check_once(self) -> bool:
        """One poll; True when a new model was swapped in. Never raises for a bad artifact."""
        with self.sessions.begin() as session:
            for status, n in registry.count_by_status(session).items():
                metrics.MODEL_VERSIONS.labels(status=status).set(n)
            wanted = registry.active_version(session)
            if wanted is None or wanted == self.holder.version or wanted == self.failed_version:
                return False
            row = registry.get_version(session, wanted)
            manifest, artifact = dict(row.manifest), bytes(row.artifact)
        try:
            predictor = self.loader(wanted, manifest, artifact)
            prediction = predictor.predict(WARMUP_HISTORY, (1.0, 1.0, 0.5))
            if not np.isfinite(prediction.score):
                raise ValueError("the warm-up prediction is not finite")
        except Exception as e:  # any failure keeps the old model serving
            self.failed_version = wanted
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error(
                "model_load_failed", version=wanted, error=str(e), serving=self.holder.version
            )
            return False
        old = self.holder.swap(predictor)
        self.failed_version = None
        metrics.set_active_model(wanted)
        log.info("model_swapped", version=wanted, previous=old.version if old else None)
        return True

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.check_once)
            except Exception as e:  # the poller must outlive a database outage
                log.warning("model_poll_failed", error=str(e))
            await asyncio.sleep(self.every_s)
