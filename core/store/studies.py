"""Studies: found by id, created on first use (race-free), updated, and their runs counted."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.errors import NotFound
from core.scoring import StudyPolicy
from core.tables import RUN_STATUSES, Run, Study, utcnow

_studies = cast(Table, Study.__table__)


def insert_new(conn: Connection, table: Table, unique: str) -> Any:
    """An INSERT into `table` that leaves out each row whose `unique` column holds a stored
    value (another writer's row, or a retry's), instead of failing on it."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=[unique])


def find_study(session: Session, study_id: str) -> Study | None:
    return session.scalar(select(Study).where(Study.study_id == study_id))


def get_study(session: Session, study_id: str) -> Study:
    study = find_study(session, study_id)
    if study is None:
        raise NotFound(f"study {study_id!r} does not exist")
    return study


def study_pk_of(conn: Connection, study_id: str) -> int:
    """The study's key, creating the study with the default policy if it does not exist."""
    query = select(_studies.c.pk).where(_studies.c.study_id == study_id)
    pk = conn.execute(query).scalar()
    if pk is None:
        now = utcnow()
        new = {
            "study_id": study_id,
            "description": None,
            "policy": StudyPolicy().model_dump(mode="json"),
            "reference_runs": 0,
            "created_at": now,
            "updated_at": now,
        }
        conn.execute(insert_new(conn, _studies, "study_id").values(new))
        pk = conn.execute(query).scalar_one()
    return int(pk)


def study_id_of(conn: Connection, study_pk: int) -> str:
    query = select(_studies.c.study_id).where(_studies.c.pk == study_pk)
    return str(conn.execute(query).scalar_one())


def ensure_study(session: Session, study_id: str) -> Study:
    """The study, created with the default policy if it does not exist (race-free)."""
    study = find_study(session, study_id)
    if study is not None:
        return study
    return session.get_one(Study, study_pk_of(session.connection(), study_id))


def put_study(
    session: Session,
    study_id: str,
    *,
    description: str | None,
    policy: StudyPolicy | None,
    description_given: bool,
) -> tuple[Study, bool]:
    """Create or update a study; returns it and whether it was created."""
    created = find_study(session, study_id) is None
    study = ensure_study(session, study_id)
    if description_given:
        study.description = description
    if policy is not None:
        study.policy = policy.model_dump(mode="json")
    if description_given or policy is not None:
        study.updated_at = utcnow()
    session.flush()
    return study, created


def study_policy(study: Study) -> StudyPolicy:
    return StudyPolicy.model_validate(study.policy)


def list_studies(session: Session) -> list[tuple[Study, dict[str, int]]]:
    counts: dict[int, dict[str, int]] = {}
    for study_pk, status, n in session.execute(
        select(Run.study_pk, Run.status, func.count()).group_by(Run.study_pk, Run.status)
    ):
        counts.setdefault(study_pk, {})[status] = n
    studies = session.scalars(select(Study).order_by(Study.study_id)).all()
    return [(s, run_counts(counts.get(s.pk, {}))) for s in studies]


def study_run_counts(session: Session, study: Study) -> dict[str, int]:
    rows = session.execute(
        select(Run.status, func.count()).where(Run.study_pk == study.pk).group_by(Run.status)
    )
    return run_counts({status: n for status, n in rows})


def run_counts(by_status: dict[str, int]) -> dict[str, int]:
    counts = {status: by_status.get(status, 0) for status in RUN_STATUSES}
    counts["total"] = sum(counts.values())
    return counts
