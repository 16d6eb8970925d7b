"""One imported run: turning a parsed record (a run object or a seed history) into a checked run.

Values are checked with the API's own request bodies, so an import accepts exactly what a
worker could have reported over HTTP.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from core.store import Metrics, RunSpec
from service.schemas import ID_PATTERN, CheckpointIn, FinalIn, RunCreate

FALLBACK_STUDY = "imported"
# The seed's production logger writes the short names; the dataset CSV and the API the long.
METRIC_SPELLINGS: dict[str, tuple[str, ...]] = {
    "mqe": ("mqe",),
    "topographic_error": ("topographic_error", "topo_error"),
    "dead_neuron_ratio": ("dead_neuron_ratio", "dead_ratio"),
}
_ID = re.compile(ID_PATTERN)
M = TypeVar("M", bound=BaseModel)


class RecordError(Exception):
    """A record that cannot be imported; the message says what is wrong with it."""


@dataclass(frozen=True)
class ImportedCheckpoint:
    epoch: int
    metrics: Metrics
    wall_s: float | None


@dataclass(frozen=True)
class ImportedRun:
    """A finished history, checked, ready to be stored as a run with its checkpoints."""

    run_id: str
    spec: RunSpec
    checkpoints: tuple[ImportedCheckpoint, ...]
    # None: the run's final is its last checkpoint (what the API's finish defaults to).
    final: Metrics | None

    @property
    def status(self) -> Literal["completed", "stopped"]:
        """Completed if the history reached max_epochs (it then joins the reference set)."""
        return "completed" if self.checkpoints[-1].epoch == self.spec.max_epochs else "stopped"

    @property
    def expected_final(self) -> Metrics:
        return self.final if self.final is not None else self.checkpoints[-1].metrics


def study_for(record: Mapping[str, Any], default_study: str | None) -> str:
    """The record's own `study_id`, else the --study option, else its data set, else 'imported'."""
    for candidate in (record.get("study_id"), default_study, record.get("dataset")):
        if candidate is not None:
            return str(candidate)
    return FALLBACK_STUDY


def run_from_record(
    record: Any,
    *,
    default_study: str | None,
    fallback_id: str | None = None,
    final: Mapping[str, Any] | None = None,
) -> ImportedRun:
    """A run object (`checkpoints`, as in minisom_runs.jsonl) or a seed history (`epochs`)."""
    if not isinstance(record, Mapping):
        raise RecordError(f"expected a JSON object, found {type(record).__name__}")
    if "checkpoints" in record:
        return _from_run_object(record, default_study)
    if "epochs" in record:
        return _from_history(record, default_study, fallback_id, final)
    raise RecordError("neither a run (no 'checkpoints' field) nor a history (no 'epochs' field)")


def _from_run_object(record: Mapping[str, Any], default_study: str | None) -> ImportedRun:
    run_id = _run_id(record.get("run_id"))
    spec = _spec(record, default_study, record.get("max_epochs"), where=f"run {run_id!r}")
    raw = record["checkpoints"]
    if not isinstance(raw, list):
        raise RecordError(f"run {run_id!r}: 'checkpoints' must be a list")
    checkpoints = [
        _checkpoint(point, f"run {run_id!r}: checkpoints[{i}]") for i, point in enumerate(raw)
    ]
    return _run(run_id, spec, checkpoints, record.get("final"))


def _from_history(
    record: Mapping[str, Any],
    default_study: str | None,
    fallback_id: str | None,
    final: Mapping[str, Any] | None,
) -> ImportedRun:
    run_id = _run_id(record.get("run_id", record.get("uid", fallback_id)))
    where = f"run {run_id!r}"
    epochs = record["epochs"]
    if not isinstance(epochs, list):
        raise RecordError(f"{where}: 'epochs' must be a list")
    columns: dict[str, list[Any]] = {}
    for name, spellings in METRIC_SPELLINGS.items():
        found = next((s for s in spellings if s in record), None)
        if found is None:
            raise RecordError(f"{where}: the history has no {' or '.join(map(repr, spellings))}")
        column = record[found]
        if not isinstance(column, list) or len(column) != len(epochs):
            raise RecordError(
                f"{where}: {found!r} must be a list as long as 'epochs' ({len(epochs)})"
            )
        columns[name] = column
    wall = record.get("wall_s")
    if wall is not None and (not isinstance(wall, list) or len(wall) != len(epochs)):
        raise RecordError(f"{where}: 'wall_s' must be a list as long as 'epochs'")
    max_epochs = record.get("max_epochs", epochs[-1] if epochs else None)
    spec = _spec(record, default_study, max_epochs, where=where)
    checkpoints = [
        _checkpoint(
            {
                "epoch": epoch,
                **{name: column[i] for name, column in columns.items()},
                "wall_s": wall[i] if wall is not None else None,
            },
            f"{where}: epochs[{i}]",
        )
        for i, epoch in enumerate(epochs)
    ]
    return _run(run_id, spec, checkpoints, final if final is not None else record.get("final"))


def _run(
    run_id: str,
    spec: RunSpec,
    checkpoints: Sequence[ImportedCheckpoint],
    final: Any,
) -> ImportedRun:
    where = f"run {run_id!r}"
    if not checkpoints:
        raise RecordError(f"{where}: the history has no checkpoints")
    for before, after in pairwise(checkpoints):
        if after.epoch <= before.epoch:
            raise RecordError(
                f"{where}: epochs must increase, but epoch {after.epoch} follows {before.epoch}"
            )
    if checkpoints[-1].epoch > spec.max_epochs:
        raise RecordError(
            f"{where}: epoch {checkpoints[-1].epoch} is above max_epochs {spec.max_epochs}"
        )
    final_metrics = None
    if final is not None:
        checked = _validate(FinalIn, final, f"{where}: final")
        final_metrics = Metrics.of(
            checked.mqe, checked.topographic_error, checked.dead_neuron_ratio
        )
    return ImportedRun(run_id, spec, tuple(checkpoints), final_metrics)


def _run_id(value: Any) -> str:
    if value is None:
        raise RecordError("the record has no run id ('run_id' or 'uid')")
    if not isinstance(value, str) or not _ID.match(value):
        raise RecordError(
            f"run id {value!r} is not valid: letters, digits and . _ : - only, "
            "starting with a letter or digit, at most 128 characters"
        )
    return value


def _spec(
    record: Mapping[str, Any], default_study: str | None, max_epochs: Any, *, where: str
) -> RunSpec:
    if max_epochs is None:
        raise RecordError(f"{where}: no 'max_epochs'")
    body = _validate(
        RunCreate,
        {
            "study_id": study_for(record, default_study),
            "max_epochs": _integral(max_epochs),
            "config": record.get("config"),
            "dataset": record.get("dataset"),
        },
        where,
    )
    return RunSpec(
        study_id=body.study_id, max_epochs=body.max_epochs, config=body.config, dataset=body.dataset
    )


def _checkpoint(point: Any, where: str) -> ImportedCheckpoint:
    if isinstance(point, Mapping) and "epoch" in point:
        point = {**point, "epoch": _integral(point["epoch"])}
    checked = _validate(CheckpointIn, point, where)
    return ImportedCheckpoint(
        epoch=checked.epoch,
        metrics=Metrics.of(checked.mqe, checked.topographic_error, checked.dead_neuron_ratio),
        wall_s=checked.wall_s,
    )


def _integral(value: Any) -> Any:
    """12.0 (what pandas writes for an integer column) is 12; anything else is left to check."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _validate(model: type[M], value: Any, where: str) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise RecordError(f"{where}: {_describe(e)}") from e


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        parts.append(f"{field}: {message}{shown}" if field else f"{message}{shown}")
    return "; ".join(parts)
