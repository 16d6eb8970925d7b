"""Prometheus metrics of the service; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

DECISIONS = Counter(
    "oracle_decisions_total", "Decisions answered, by action and policy", ["action", "policy"]
)
CHECKPOINTS = Counter("oracle_checkpoints_stored_total", "Checkpoints stored")
REQUEST_SECONDS = Histogram(
    "oracle_request_seconds",
    "Request latency by route and method",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MODEL_LOAD_FAILURES = Counter(
    "oracle_model_load_failures_total", "Model artifacts that failed to load or warm up"
)
ACTIVE_MODEL = Gauge(
    "oracle_active_model_info",
    "The served model version (value 1)",
    ["version"],
    multiprocess_mode="liveall",
)
# The training job runs in its own process (or container); its outcomes are in the registry,
# which every API process reads when it polls the active alias.
MODEL_VERSIONS = Gauge(
    "oracle_model_versions",
    "Model versions in the registry by status: retraining outcomes (published, rejected)",
    ["status"],
    multiprocess_mode="max",
)
STORAGE_ERRORS = Counter("oracle_storage_unavailable_total", "Requests answered 503: storage")


def set_active_model(version: str | None) -> None:
    ACTIVE_MODEL.clear()
    if version is not None:
        ACTIVE_MODEL.labels(version=version).set(1)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
