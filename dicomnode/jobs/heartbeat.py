"""Process heartbeats in the database: the console and ``/readyz`` tell a live worker by them.

A heartbeat is one row per process (``host:pid``), updated every few seconds; works the same for
a worker child of ``serve`` and for ``dicomnode worker`` on another host.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError

from dicomnode.db.models import Heartbeat, utcnow
from dicomnode.db.session import SessionFactory

log = logging.getLogger(__name__)


def beat(sessions: SessionFactory, name: str, role: str, *, now: datetime | None = None) -> None:
    """Record that ``name`` is alive now (never raises: a heartbeat must not stop the worker)."""
    now = now or utcnow()
    try:
        with sessions.begin() as session:
            row = session.get(Heartbeat, name)
            if row is None:
                session.add(Heartbeat(name=name, role=role, started_at=now, at=now))
            else:
                row.at = now
    except SQLAlchemyError:
        log.warning("could not record the %s heartbeat", role, exc_info=True)


def gone(sessions: SessionFactory, name: str) -> None:
    """Remove a process's heartbeat when it stops cleanly."""
    try:
        with sessions.begin() as session:
            session.execute(delete(Heartbeat).where(Heartbeat.name == name))
    except SQLAlchemyError:
        log.warning("could not remove heartbeat %s", name, exc_info=True)


def alive(sessions: SessionFactory, role: str, stale_s: float, *,
          now: datetime | None = None) -> list[Heartbeat]:
    """The processes of ``role`` whose last heartbeat is younger than ``stale_s``."""
    cutoff = (now or utcnow()) - timedelta(seconds=stale_s)
    with sessions() as session:
        return list(session.scalars(select(Heartbeat).where(Heartbeat.role == role,
                                                            Heartbeat.at >= cutoff)))
