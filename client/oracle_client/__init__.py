"""Worker SDK for The Oracle: report SOM checkpoints over HTTP and get continue/stop back."""

from oracle_client.callback import TrainingCallback
from oracle_client.errors import (
    AuthError,
    Conflict,
    InvalidInput,
    NotFound,
    OracleError,
    OracleHTTPError,
    OracleUnavailable,
    ServerError,
)
from oracle_client.models import FAIL_OPEN, Decision, Metrics, SomMetrics
from oracle_client.oracle import Oracle
from oracle_client.retry import RetryPolicy
from oracle_client.run import Run
from oracle_client.som import som_metrics

__all__ = [
    "FAIL_OPEN",
    "AuthError",
    "Conflict",
    "Decision",
    "InvalidInput",
    "Metrics",
    "NotFound",
    "Oracle",
    "OracleError",
    "OracleHTTPError",
    "OracleUnavailable",
    "RetryPolicy",
    "Run",
    "ServerError",
    "SomMetrics",
    "TrainingCallback",
    "som_metrics",
]
