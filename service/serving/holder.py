"""Holds the serving predictor; a swap replaces one reference, so a request keeps its model."""

from __future__ import annotations

import threading

from core.policy import Predictor


class ModelHolder:
    def __init__(self) -> None:
        self._current: Predictor | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> Predictor | None:
        """Read once per request and keep the reference: a swap never changes it mid-way."""
        return self._current

    @property
    def version(self) -> str | None:
        current = self._current
        return current.version if current is not None else None

    def swap(self, new: Predictor | None) -> Predictor | None:
        """Install a fully loaded and warmed-up predictor; returns the one it replaced."""
        with self._lock:
            old, self._current = self._current, new
        return old
