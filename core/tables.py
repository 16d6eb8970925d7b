"""The schema as SQLAlchemy 2 typed tables. The database gets it only through migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ID_LENGTH = 128
# A run's `status`: it takes checkpoints while running, and ends as one of the others.
RUN_STATUSES = ("running", "completed", "stopped", "failed")
FINISHED_STATUSES = RUN_STATUSES[1:]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC on every backend (SQLite stores them without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class Study(Base):
    """One EA on one data set: the runs compared with each other."""

    __tablename__ = "studies"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Counts the runs that joined the reference set (completed at max_epochs); each such run
    # gets the next number, so a process can fetch only the reference runs it has not seen.
    reference_runs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Run(Base):
    """One SOM training, from its first checkpoint to its finish."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_study_pk", "study_pk", "pk"),
        Index("ix_runs_study_reference", "study_pk", "reference_seq"),
        Index("ix_runs_status_pk", "status", "pk"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.pk", ondelete="CASCADE"))
    max_epochs: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    dataset: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default="running")
    last_epoch: Mapped[int | None] = mapped_column(Integer)
    n_checkpoints: Mapped[int] = mapped_column(Integer, default=0)
    # Finals; NULL where the map could not produce a finite number (or no final is known).
    final_mqe: Mapped[float | None] = mapped_column(Float)
    final_topographic_error: Mapped[float | None] = mapped_column(Float)
    final_dead_neuron_ratio: Mapped[float | None] = mapped_column(Float)
    # Position in the study's reference set; NULL unless completed at max_epochs.
    reference_seq: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Checkpoint(Base):
    """One reported checkpoint and the decision it was answered with, in one row.

    One row for both makes "a checkpoint without its decision" impossible by construction,
    and keeps the hot write path at a single insert.
    """

    __tablename__ = "checkpoints"

    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.pk", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    progress: Mapped[float] = mapped_column(Float)
    # NULL: the map reported a non-finite value (null, NaN or Infinity): a diverged map.
    mqe: Mapped[float | None] = mapped_column(Float)
    topographic_error: Mapped[float | None] = mapped_column(Float)
    dead_neuron_ratio: Mapped[float | None] = mapped_column(Float)
    wall_s: Mapped[float | None] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    action: Mapped[str] = mapped_column(String(8))
    policy: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    predicted_mqe: Mapped[float | None] = mapped_column(Float)
    predicted_topographic_error: Mapped[float | None] = mapped_column(Float)
    predicted_dead_neuron_ratio: Mapped[float | None] = mapped_column(Float)
    predicted_score: Mapped[float | None] = mapped_column(Float)
    score_low: Mapped[float | None] = mapped_column(Float)
    score_high: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(ID_LENGTH))


class ModelVersion(Base):
    """A trained model: its artifact, its manifest and whether it passed the gate."""

    __tablename__ = "model_versions"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    architecture: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # candidate | rejected | published
    reason: Mapped[str | None] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Alias(Base):
    """A named pointer to a model version; `active` is the one every API process serves."""

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[str] = mapped_column(ForeignKey("model_versions.version"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(ID_LENGTH))
