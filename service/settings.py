"""Service settings from the environment; built by `main` or by tests, never at import."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.db import DEFAULT_DATABASE_URL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORACLE_", extra="ignore")

    database_url: str = Field(DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    # Comma-separated role:token pairs (roles: worker, admin, reader), or a file of them.
    tokens: str | None = None
    tokens_file: Path | None = None
    # Bodies above this get 413 before they are parsed. A checkpoint is ~200 bytes; a run's
    # config a few KB; a predict call with 1,000 checkpoints ~80 KB.
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    # How stale a study's reference set may be, per process (seconds).
    reference_refresh_s: float = Field(1.0, ge=0)
    # How often each process looks at the registry's active alias (seconds).
    model_poll_s: float = Field(2.0, gt=0)
    db_pool_size: int = Field(5, ge=1)
    # `oracle serve` brings an empty or older schema to head before it serves (under the
    # migration lock, so replicas may start together). Off: it refuses to start unless the
    # schema is at head, for deployments that migrate as a step of their own.
    migrate_on_start: bool = True
    # Activate the model shipped with the package when no version is active, so a fresh
    # deployment decides with the oracle policy from its first request.
    default_model: bool = True
    # Freeze the heap built at start-up out of the garbage collector's way, and collect the
    # young generation less often (see main._tune_garbage_collector). Off in tests, which
    # build many apps in one process.
    gc_freeze: bool = True
    log_level: str = "info"
    log_format: Literal["json", "console"] = "json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
