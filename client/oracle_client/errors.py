"""The SDK's error tree: what a worker may catch, each with the case that raises it."""

from __future__ import annotations


class OracleError(Exception):
    """Base of every error this SDK raises."""


class OracleUnavailable(OracleError):
    """The service was not reached, or kept answering 502/503/504 or 429, within the budget.

    Raised only with `fail_open=False`; otherwise `report` answers `continue` instead.
    """


class OracleHTTPError(OracleError):
    """The service answered with an error that a retry cannot fix; `detail` is its own words."""

    def __init__(self, method: str, url: str, status_code: int, detail: object) -> None:
        self.method = method
        self.url = url
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{method} {url} -> {status_code}: {detail}")


class AuthError(OracleHTTPError):
    """401 or 403: the token is missing, unknown, or lacks the role (workers need `worker`)."""


class NotFound(OracleHTTPError):
    """404: the run (or another id) is unknown to the service."""


class Conflict(OracleHTTPError):
    """409: the request contradicts stored state (a run id reused with another body, a
    lower or changed epoch, a checkpoint for a run that has ended)."""


class InvalidInput(OracleHTTPError):
    """400, 413 or 422: the body was refused and nothing was stored."""


class ServerError(OracleHTTPError, OracleUnavailable):
    """A 5xx other than 502/503/504: a fault in the service, not retried; fails open too."""


_BY_STATUS: dict[int, type[OracleHTTPError]] = {
    400: InvalidInput,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    413: InvalidInput,
    422: InvalidInput,
}


def http_error(method: str, url: str, status_code: int, detail: object) -> OracleHTTPError:
    """The typed error for a final (not retried) error status."""
    if status_code >= 500:
        return ServerError(method, url, status_code, detail)
    kind = _BY_STATUS.get(status_code, OracleHTTPError)
    return kind(method, url, status_code, detail)
