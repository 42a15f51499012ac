"""Priors from PACS in the database: each query and retrieval (``prior_retrievals``), and what
they mean for a follow-up's job (has it asked already; is its retrieved prior still on the way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from dicomnode.db.models import PriorRetrieval, Series, Study
from dicomnode.db.session import SessionFactory
from dicomnode.domain import PacsOperation

MOVED = ("retrieved", "partial")  # outcomes after which the PACS sent (part of) the series


@dataclass(frozen=True)
class FollowupFacts:
    """What a PACS query for a series' prior needs from the database."""

    attributes: dict[str, Any]  # the series' header attributes (receive.checks.read_header)
    study_instance_uid: str
    fetched_as_prior: bool  # the series was itself moved from the PACS as another's prior


@dataclass(frozen=True)
class RetrievalState:
    """A job's earlier queries: whether it asked, and the series the PACS sent for it."""

    attempted: bool
    moved_series_uid: str = ""  # "" when nothing was moved
    moved_at: datetime | None = None
    moved_series_state: str = ""  # its state in ``series``; "" while none of it has arrived


def followup_facts(sessions: SessionFactory, series_uid: str) -> FollowupFacts:
    """The series' attributes, its study and whether it came from the PACS as a prior."""
    with sessions() as session:
        row = session.execute(select(Series.attributes, Study.study_instance_uid,
                                     Study.patient_id)
                              .join(Study, Series.study_id == Study.id)
                              .where(Series.series_instance_uid == series_uid)).first()
        fetched = session.scalars(select(PriorRetrieval.id).where(
            PriorRetrieval.series_instance_uid == series_uid,
            PriorRetrieval.operation == "move").limit(1)).first() is not None
    if row is None:
        return FollowupFacts({}, "", fetched)
    attrs = dict(row[0] or {})
    attrs.setdefault("patient_id", row[2] or "")
    return FollowupFacts(attrs, row[1], fetched)


def holds_series(sessions: SessionFactory, series_uid: str) -> bool:
    """Whether the node has received (any of) the series, whatever became of it."""
    with sessions() as session:
        return session.scalars(select(Series.id).where(
            Series.series_instance_uid == series_uid)).first() is not None


def retrieval_state(sessions: SessionFactory, job_id: int) -> RetrievalState:
    """What the job's earlier queries found (``attempted`` False: it has not asked yet)."""
    with sessions() as session:
        rows = session.scalars(select(PriorRetrieval).where(PriorRetrieval.job_id == job_id)
                               .order_by(PriorRetrieval.id)).all()
        moved = [r for r in rows if r.operation == "move" and r.outcome in MOVED]
        if not moved:
            return RetrievalState(attempted=bool(rows))
        last = moved[-1]
        state = session.scalars(select(Series.state).where(
            Series.series_instance_uid == last.series_instance_uid)).first()
        return RetrievalState(True, last.series_instance_uid, last.finished_at, state or "")


def record_operations(sessions: SessionFactory, job_id: int,
                      operations: Sequence[PacsOperation]) -> None:
    """One row per operation, in one transaction."""
    with sessions.begin() as session:
        session.add_all(PriorRetrieval(job_id=job_id, **asdict(op)) for op in operations)


def job_retrievals(sessions: SessionFactory, job_id: int) -> list[dict[str, Any]]:
    """The job's rows, oldest first, as plain dicts (for status pages and tests)."""
    with sessions() as session:
        rows = session.scalars(select(PriorRetrieval).where(PriorRetrieval.job_id == job_id)
                               .order_by(PriorRetrieval.id)).all()
        return [{c.key: getattr(r, c.key) for c in PriorRetrieval.__table__.columns}
                for r in rows]
