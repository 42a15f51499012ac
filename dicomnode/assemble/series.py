"""Series completion: a series is complete after ``settle_s`` with no new instance.

Inputs: series rows in state ``receiving``. Outputs: the recorded geometry and either a queued job
(one per series version, enforced by a unique constraint) or a rejection with its reason.
A count short of ``ImagesInAcquisition`` waits up to ``max_wait_incomplete_s`` before it goes ahead
with a warning. Late instances reopen the series as a new version (see receive/instance_store.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicomnode.assemble.selection import Sibling, evaluate
from dicomnode.assemble.stack_summary import series_geometry
from dicomnode.config import AssemblySettings, EligibilitySettings
from dicomnode.db.dml import affected_rows
from dicomnode.db.models import Instance, Job, Series, SeriesState, utcnow
from dicomnode.db.session import SessionFactory
from dicomnode.logs import log_context

log = logging.getLogger(__name__)
_JUDGED_ELIGIBLE = (SeriesState.QUEUED, SeriesState.PROCESSING, SeriesState.DONE,
                    SeriesState.FAILED, SeriesState.NOT_ANALYSED)


@dataclass(frozen=True)
class Completion:
    series_instance_uid: str
    version: int
    state: str
    reason: str
    job_id: int | None = None


def sweep(sessions: SessionFactory, assembly: AssemblySettings, rules: EligibilitySettings,
          *, now: datetime | None = None) -> list[Completion]:
    """Complete every settled series; returns what happened to each (for logs and tests)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=assembly.settle_s)
    with sessions() as session:
        ids = list(session.scalars(select(Series.id).where(
            Series.state == SeriesState.RECEIVING, Series.last_received_at <= cutoff)))
    done = []
    for series_id in ids:
        with sessions.begin() as session:
            result = _complete(session, series_id, assembly, rules, now)
        if result is not None:
            done.append(result)
    return done


def _complete(session: Session, series_id: int, assembly: AssemblySettings,
              rules: EligibilitySettings, now: datetime) -> Completion | None:
    series = session.get(Series, series_id)
    if series is None or series.state != SeriesState.RECEIVING:
        return None
    uid = series.series_instance_uid
    with log_context(series_uid=uid):
        geoms = list(session.scalars(select(Instance.geometry).where(
            Instance.series_id == series_id)))
        expected = max((int(g.get("images_in_acquisition") or 0) for g in geoms), default=0)
        count = len(geoms)
        geometry = series_geometry(geoms)
        geometry["instances"] = count
        if expected:
            geometry["images_in_acquisition"] = expected
            if count < expected:
                waited_s = (now - series.last_received_at).total_seconds()
                if waited_s < assembly.max_wait_incomplete_s:
                    series.reason = f"waiting: {count} of {expected} instances"
                    return None
                geometry["warning"] = (f"went ahead with {count} of {expected} instances after "
                                       f"{waited_s:.0f} s")
                log.warning("%s", geometry["warning"])
        siblings = [Sibling(s.series_instance_uid, s.attributes.get("kernel", ""), s.state)
                    for s in session.scalars(select(Series).where(
                        Series.study_id == series.study_id, Series.id != series.id,
                        Series.state.in_(_JUDGED_ELIGIBLE)))]
        reason = evaluate(series.attributes, geometry, count, rules, siblings)
        # Conditional update: if an instance arrived meanwhile (count or version changed), this
        # sweep leaves the series alone and a later one completes it with every instance.
        changed = affected_rows(session.execute(
            update(Series).where(Series.id == series_id, Series.version == series.version,
                                 Series.state == SeriesState.RECEIVING,
                                 Series.instance_count == count)
            .values(state=SeriesState.REJECTED if reason else SeriesState.QUEUED,
                    reason=reason or geometry.get("warning", ""), geometry=geometry,
                    completed_at=now, updated_at=now)
            .execution_options(synchronize_session=False)))
        if not changed:
            return None
        if reason:
            log.info("series rejected: %s", reason)
            return Completion(uid, series.version, SeriesState.REJECTED, reason)
        job = Job(series_id=series_id, version=series.version)
        session.add(job)
        session.flush()
        with log_context(job_id=job.id):
            log.info("series complete (%d instances, tilt %.1f deg): job queued", count,
                     geometry.get("tilt_deg", 0.0))
        return Completion(uid, series.version, SeriesState.QUEUED, "", job.id)
