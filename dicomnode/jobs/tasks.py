"""Scheduled tasks. They take ids and settings, never ORM objects, and open their own sessions.

Every node of a cluster schedules them; each run takes a once-per-cluster lock
(:func:`~dicomnode.jobs.leases.cluster_lock`, a PostgreSQL advisory lock) and is skipped when a
peer holds it, so a series is completed, and old images deleted, by one node at a time.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select

from dicomnode.assemble.series import sweep
from dicomnode.config import Settings
from dicomnode.db.dml import affected_rows
from dicomnode.db.models import Instance, Series, SeriesState, Study, utcnow
from dicomnode.db.session import SessionFactory
from dicomnode.jobs.leases import cluster_lock
from dicomnode.storage import series_dir

log = logging.getLogger(__name__)
_FINISHED = (SeriesState.REJECTED, SeriesState.DONE, SeriesState.FAILED,
             SeriesState.NOT_ANALYSED)


def completion_sweep(sessions: SessionFactory, settings: Settings) -> int:
    """Complete settled series (assemble stage); returns how many changed state."""
    with cluster_lock(sessions, "completion_sweep") as mine:
        if not mine:
            return 0
        return len(sweep(sessions, settings.assembly, settings.eligibility))


def retention(sessions: SessionFactory, storage_root: Path, retention_days: int) -> int:
    """Delete received images of finished series older than ``retention_days``; 0 keeps all.

    Series and study rows stay (with the reason), so the history remains visible in status.
    """
    if retention_days <= 0:
        return 0
    with cluster_lock(sessions, "retention") as mine:
        return _retention(sessions, storage_root, retention_days) if mine else 0


def _retention(sessions: SessionFactory, storage_root: Path, retention_days: int) -> int:
    cutoff = utcnow() - timedelta(days=retention_days)
    removed = 0
    with sessions() as session:
        old = list(session.execute(
            select(Series.id, Series.series_instance_uid, Study.study_instance_uid)
            .join(Study, Series.study_id == Study.id)
            .where(Series.state.in_(_FINISHED), Series.last_received_at < cutoff,
                   Series.instance_count > 0)).all())
    for series_id, series_uid, study_uid in old:
        with sessions.begin() as session:
            series = session.get(Series, series_id)
            if series is None or series.state not in _FINISHED:
                continue
            removed += affected_rows(session.execute(
                delete(Instance).where(Instance.series_id == series_id)))
            series.instance_count = 0
            series.reason = (series.reason + "; " if series.reason else "") + \
                f"images deleted after {retention_days} days"
        shutil.rmtree(series_dir(storage_root, study_uid, series_uid), ignore_errors=True)
        log.info("retention removed images of series older than %d days", retention_days,
                 extra={"series_uid": series_uid})
    return removed
