"""The model registry: the only writer of model versions and of the `active` alias."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from core.tables import Alias, ModelVersion, utcnow

ACTIVE = "active"
STATUSES = ("candidate", "published", "rejected")


@dataclass(frozen=True)
class ActivePointer:
    version: str
    manifest: dict[str, Any]


def add_version(
    session: Session,
    *,
    version: str,
    architecture: str,
    manifest: dict[str, Any],
    artifact: bytes,
    status: str = "candidate",
    reason: str | None = None,
) -> ModelVersion:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    if session.scalar(select(ModelVersion.pk).where(ModelVersion.version == version)):
        raise Conflict(f"model version {version!r} exists already")
    row = ModelVersion(
        version=version,
        architecture=architecture,
        status=status,
        reason=reason,
        manifest=manifest,
        artifact=artifact,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def list_versions(session: Session) -> Sequence[ModelVersion]:
    return session.scalars(select(ModelVersion).order_by(ModelVersion.pk.desc())).all()


def get_version(session: Session, version: str) -> ModelVersion:
    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        raise NotFound(f"model version {version!r} does not exist")
    return row


def set_status(session: Session, version: str, status: str, reason: str | None) -> None:
    row = get_version(session, version)
    row.status = status
    row.reason = reason
    session.flush()


def active_version(session: Session) -> str | None:
    """The version the alias points at: one primary-key read, cheap enough to poll."""
    return session.scalar(select(Alias.version).where(Alias.name == ACTIVE))


def activate(session: Session, version: str, *, by: str) -> ModelVersion:
    """Move the alias to `version` (a promotion or a rollback); rejected versions refuse."""
    row = get_version(session, version)
    if row.status == "rejected":
        raise Conflict(f"model version {version!r} was rejected: {row.reason}")
    alias = session.get(Alias, ACTIVE)
    if alias is None:
        session.add(Alias(name=ACTIVE, version=version, updated_at=utcnow(), updated_by=by))
    else:
        alias.version = version
        alias.updated_at = utcnow()
        alias.updated_by = by
    row.status = "published"
    session.flush()
    return row


def install_default(session: Session, artifact: bytes, manifest: dict[str, Any]) -> str | None:
    """Register and activate the shipped model when no version is active (a fresh deployment).

    Returns the version it activated, or None when a model was active already, so a trained
    or rolled-back choice is never overridden. Its name carries the weights' checksum: the
    same shipped file is the same version in every process and replica.
    """
    if active_version(session) is not None:
        return None
    version = f"default-{manifest['architecture']['name']}-{manifest['weights_sha256'][:8]}"
    exists = session.scalar(select(ModelVersion.pk).where(ModelVersion.version == version))
    if exists is None:
        add_version(
            session,
            version=version,
            architecture=str(manifest["architecture"]["name"]),
            manifest=manifest,
            artifact=artifact,
            status="published",
            reason="the model shipped with the package",
        )
    activate(session, version, by="oracle serve (shipped default)")
    return version


def count_by_status(session: Session) -> dict[str, int]:
    """How many versions the training job published, rejected or left as candidates."""
    rows = session.execute(
        select(ModelVersion.status, func.count()).group_by(ModelVersion.status)
    ).all()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({str(status): int(n) for status, n in rows})
    return counts
