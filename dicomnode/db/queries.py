"""Read-only queries for ``dicomnode status`` and monitoring."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from dicomnode.db.models import DiscardedClass, Job, ReceiveError, Series, Study
from dicomnode.db.session import SessionFactory


def series_status(sessions: SessionFactory, *, limit: int = 50) -> list[dict[str, Any]]:
    """Most recently updated series first, as JSON-ready dicts (no patient identifiers)."""
    with sessions() as session:
        rows = session.execute(
            select(Series, Study.study_instance_uid)
            .join(Study, Series.study_id == Study.id)
            .order_by(Series.updated_at.desc(), Series.id.desc()).limit(limit)).all()
        # Columns, not Job: status reads a database at an older revision too (with a warning).
        jobs: dict[tuple[int, int], Any] = {}
        if rows:
            for job in session.execute(select(Job.id, Job.series_id, Job.version, Job.worker).where(
                    Job.series_id.in_([s.id for s, _ in rows])).order_by(Job.id)):
                jobs[(job.series_id, job.version)] = job
        from dicomnode.send.outbox import delivery_summary

        delivery = delivery_summary(sessions, [j.id for j in jobs.values()])
        out = []
        for series, study_uid in rows:
            latest = jobs.get((series.id, series.version))
            geometry = series.geometry or {}
            out.append({
                "series_instance_uid": series.series_instance_uid,
                "study_instance_uid": study_uid,
                "description": series.attributes.get("series_description", ""),
                "instances": series.instance_count,
                "state": series.state,
                "reason": series.reason,
                "version": series.version,
                "job_id": latest.id if latest else None,
                "worker": latest.worker if latest else None,
                "tilt_deg": geometry.get("tilt_deg"),
                "delivery": delivery.get(latest.id) if latest else None,
                "spacing_mm": geometry.get("spacing_mm"),
                "updated_at": series.updated_at.isoformat(timespec="seconds") + "Z",
            })
        return out


def counters(sessions: SessionFactory) -> dict[str, Any]:
    """Discarded instances per SOP class and the number of refused instances."""
    with sessions() as session:
        discarded = {c.sop_class_uid: c.count for c in session.scalars(select(DiscardedClass))}
        refused = session.scalar(select(func.count(ReceiveError.id))) or 0
    return {"discarded": discarded, "refused": refused}


def cluster_nodes(sessions: SessionFactory) -> list[dict[str, Any]]:
    """The nodes and workers that share this database, with their last sign of life."""
    from dicomnode.db.models import NodeRun

    with sessions() as session:
        return [{"name": n.name, "role": n.role, "host": n.host, "pid": n.pid,
                 "version": n.version,
                 "started_at": n.started_at.isoformat(timespec="seconds") + "Z",
                 "seen_at": n.seen_at.isoformat(timespec="seconds") + "Z"}
                for n in session.scalars(select(NodeRun).order_by(NodeRun.name))]
