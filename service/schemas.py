"""Request and response bodies of the HTTP API, named by role."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from core.scoring import StudyPolicy

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
MAX_EPOCHS = 10_000_000
MAX_CONFIG_BYTES = 16 * 1024
MAX_CONFIG_DEPTH = 8


class Strict(BaseModel):
    """Requests: unknown fields are an error, and no type is coerced ("5" is not 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _range_if_finite(low: float, high: float | None) -> Any:
    def check(value: float | None) -> float | None:
        if value is None or math.isnan(value) or value == math.inf:
            return value  # a diverged map: accepted, stored as non-finite
        if value < low or (high is not None and value > high):
            bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
            raise ValueError(f"must be {bound}, or null/NaN/Infinity for a diverged map")
        return value

    return AfterValidator(check)


Mqe = Annotated[float | None, _range_if_finite(0.0, None)]
Ratio = Annotated[float | None, _range_if_finite(0.0, 1.0)]
WallSeconds = Annotated[float | None, Field(ge=0, allow_inf_nan=False)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("may not contain the NUL character (\\u0000)")
    return value


# Free text that both backends store as sent: Postgres's text columns refuse NUL.
NoNul = AfterValidator(_no_nul)
Description = Annotated[str, StringConstraints(max_length=4000), NoNul]
DatasetName = Annotated[str, StringConstraints(max_length=128), NoNul]


def _depth(value: Any, level: int = 0) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


# --- studies ---------------------------------------------------------------------------------


class StudyPut(Strict):
    description: Description | None = None
    policy: StudyPolicy | None = None


class RunCounts(BaseModel):
    running: int
    completed: int
    stopped: int
    failed: int
    total: int


class StudyPublic(BaseModel):
    study_id: str
    description: str | None
    policy: StudyPolicy
    runs: RunCounts
    created_at: datetime
    updated_at: datetime


class StudyList(BaseModel):
    studies: list[StudyPublic]


# --- runs ------------------------------------------------------------------------------------


def _bounded_config(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    if _depth(value) > MAX_CONFIG_DEPTH:
        raise ValueError(f"config may nest at most {MAX_CONFIG_DEPTH} levels")
    try:
        size = len(json.dumps(value, allow_nan=False))
    except ValueError as e:
        raise ValueError("config may not hold NaN or Infinity") from e
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"config is {size} bytes as JSON; at most {MAX_CONFIG_BYTES}")
    return value


# A run's configuration as its worker chose it (free-form JSON, bounded in depth and size); the
# model reads the MiniSom parameters it knows (core.features.CONTEXT_CHOICES).
RunConfig = Annotated[dict[str, Any] | None, AfterValidator(_bounded_config)]


class RunCreate(Strict):
    study_id: Identifier
    max_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
    config: RunConfig = None
    dataset: DatasetName | None = None


class Metrics(BaseModel):
    mqe: float | None
    topographic_error: float | None
    dead_neuron_ratio: float | None


class FinalIn(Strict):
    mqe: Mqe
    topographic_error: Ratio
    dead_neuron_ratio: Ratio


class RunFinish(Strict):
    status: Literal["completed", "stopped", "failed"]
    final: FinalIn | None = None


class Decision(BaseModel):
    run_id: str
    epoch: int
    action: Literal["continue", "stop"]
    reason: str
    predicted_final: Metrics | None = None
    predicted_score: float | None = None
    score_interval: tuple[float, float] | None = None
    threshold: float | None = None
    policy: str
    model_version: str | None = None


class CheckpointIn(Strict):
    epoch: Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
    # Required, but null is allowed: a diverged map could not produce a number.
    mqe: Mqe
    topographic_error: Ratio
    dead_neuron_ratio: Ratio
    wall_s: WallSeconds = None


class CheckpointPublic(BaseModel):
    epoch: int
    progress: float
    mqe: float | None
    topographic_error: float | None
    dead_neuron_ratio: float | None
    wall_s: float | None
    received_at: datetime
    decision: Decision


class RunPublic(BaseModel):
    run_id: str
    study_id: str
    max_epochs: int
    config: dict[str, Any] | None
    dataset: str | None
    status: Literal["running", "completed", "stopped", "failed"]
    last_epoch: int | None
    n_checkpoints: int
    final: Metrics | None
    created_at: datetime
    finished_at: datetime | None


class RunDetail(RunPublic):
    checkpoints: list[CheckpointPublic]


class RunPage(BaseModel):
    runs: list[RunPublic]
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )


# --- prediction ------------------------------------------------------------------------------


class PredictIn(Strict):
    """The seed's partial-sequence JSON plus `max_epochs`."""

    max_epochs: Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
    epochs: Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_EPOCHS)]], Field(min_length=1, max_length=1000)
    ]
    mqe: Annotated[list[Mqe], Field(max_length=1000)]
    topographic_error: Annotated[list[Ratio], Field(max_length=1000)]
    dead_neuron_ratio: Annotated[list[Ratio], Field(max_length=1000)]
    # A JSON array of three (strict mode refuses a JSON array for a tuple field).
    weights: (
        Annotated[
            list[Annotated[float, Field(ge=0, allow_inf_nan=False)]],
            Field(min_length=3, max_length=3),
        ]
        | None
    ) = None
    # The run's configuration, as `PUT /v1/runs/{id}` takes it: a model that reads it
    # (feature schema 2) forecasts the run as configured; without it, as one of unknown config.
    config: RunConfig = None

    @model_validator(mode="after")
    def _consistent(self) -> PredictIn:
        n = len(self.epochs)
        for name in ("mqe", "topographic_error", "dead_neuron_ratio"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} values; epochs has {n}")
        if any(b <= a for a, b in zip(self.epochs, self.epochs[1:], strict=False)):
            raise ValueError("epochs must increase strictly")
        if self.epochs[-1] > self.max_epochs:
            raise ValueError(f"epoch {self.epochs[-1]} is above max_epochs {self.max_epochs}")
        return self


class PredictionPublic(BaseModel):
    predicted_final: Metrics
    predicted_score: float
    score_interval: tuple[float, float]
    model_version: str


# --- models ----------------------------------------------------------------------------------


class ModelPublic(BaseModel):
    version: str
    architecture: str
    status: str
    active: bool
    reason: str | None
    created_at: datetime
    metrics: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelPublic]
    active: str | None
