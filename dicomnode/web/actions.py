"""Console actions (resend, reprocess, pause, resume) and the audit log they write."""

from __future__ import annotations

import logging

from sqlalchemy import delete

from dicomnode.db.models import AuditEntry, DestinationPause, utcnow
from dicomnode.db.session import SessionFactory
from dicomnode.jobs.queue import reprocess
from dicomnode.send.outbox import resend

log = logging.getLogger(__name__)


def record(sessions: SessionFactory, user: str, action: str, target: str = "", detail: str = "",
           peer: str = "") -> None:
    """One audit row (and an INFO line): who did what, to what, and when."""
    with sessions.begin() as session:
        session.add(AuditEntry(user=user[:64], action=action[:32], target=target[:128],
                               detail=detail, peer_address=peer[:64]))
    log.info("console: %s %s %s %s", user, action, target, detail)


def resend_job(sessions: SessionFactory, user: str, job_id: int, peer: str) -> str:
    n = resend(sessions, job_id)
    record(sessions, user, "resend", f"job {job_id}", f"{n} outputs queued again", peer)
    return f"job {job_id}: {n} outputs queued for sending again"


def reprocess_series(sessions: SessionFactory, user: str, series_id: int, peer: str) -> str:
    job_id = reprocess(sessions, series_id)
    record(sessions, user, "reprocess", f"series {series_id}", f"new job {job_id}", peer)
    return f"series {series_id} queued again as job {job_id}"


def pause(sessions: SessionFactory, user: str, destination: str, peer: str) -> str:
    with sessions.begin() as session:
        if session.get(DestinationPause, destination) is None:
            session.add(DestinationPause(destination=destination, paused_at=utcnow(),
                                         paused_by=user[:64]))
    record(sessions, user, "pause", f"destination {destination}", "", peer)
    return f"delivery to {destination} paused"


def resume(sessions: SessionFactory, user: str, destination: str, peer: str) -> str:
    with sessions.begin() as session:
        session.execute(delete(DestinationPause)
                        .where(DestinationPause.destination == destination))
    record(sessions, user, "resume", f"destination {destination}", "", peer)
    return f"delivery to {destination} resumed"
