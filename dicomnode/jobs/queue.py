"""The processing job queue in the database: claim, finish, requeue.

A claim takes a lease (:mod:`dicomnode.jobs.leases`): the row is selected ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL and moved with a conditional UPDATE (the compare-and-set that serialised
SQLite writers need), so two workers, even on two hosts, never hold the same job. A job whose
lease expired (its worker died) is taken over by the next claim; :func:`finish` records a result
only for the holder of the current token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from dicomnode.db.dml import affected_rows
from dicomnode.db.models import Instance, Job, JobState, Series, SeriesState, Study, utcnow
from dicomnode.db.session import SessionFactory
from dicomnode.domain import SeriesRef
from dicomnode.errors import LeaseLost
from dicomnode.jobs.leases import expiry, job_takeable, new_token, release_own, skip_locked

log = logging.getLogger(__name__)


def claim_next(sessions: SessionFactory, storage_root: Path, worker: str, *,
               lease_s: float = 60.0) -> SeriesRef | None:
    """Claim the oldest queued job (or one whose lease expired) for ``lease_s``; None when
    there is none. The returned reference carries the lease token."""
    while True:
        with sessions.begin() as session:
            now = utcnow()
            row = session.execute(skip_locked(
                select(Job.id, Job.state, Job.worker).where(job_takeable(now))
                .order_by(Job.id).limit(1), sessions)).first()
            if row is None:
                return None
            job_id, state, previous = row
            token = new_token()
            claimed = affected_rows(session.execute(
                update(Job).where(Job.id == job_id, job_takeable(now))
                .values(state=JobState.PROCESSING, worker=worker, claimed_at=now,
                        attempts=Job.attempts + 1, lease_token=token,
                        lease_expires_at=expiry(lease_s, now))
                .execution_options(synchronize_session=False)))
            if not claimed:
                continue  # another worker was faster; try the next one
            if state == JobState.PROCESSING:
                log.warning("took over job %d from %s: its lease expired", job_id, previous)
            # Foreign keys guarantee these rows; session.get is typed Optional.
            job = session.get_one(Job, job_id)
            series = session.get_one(Series, job.series_id)
            study = session.get_one(Study, series.study_id)
            if series.version == job.version:
                series.state = SeriesState.PROCESSING
            paths = tuple(storage_root / p for p in session.scalars(
                select(Instance.path).where(Instance.series_id == series.id)
                .order_by(Instance.id)))
            return SeriesRef(job_id=job.id, series_instance_uid=series.series_instance_uid,
                             study_instance_uid=study.study_instance_uid, version=job.version,
                             instance_paths=paths, lease_token=token)


def finish(sessions: SessionFactory, job_id: int, *, error: str = "",
           timings_s: dict[str, Any] | None = None, outputs: dict[str, Any] | None = None,
           also: Callable[[Session], object] | None = None, not_analysed: str = "",
           token: str | None = None) -> None:
    """Mark a claimed job done (``error`` empty) or failed (``error`` is ``Type: message``).

    ``not_analysed`` (its reason, ``QA: ...``) ends the job and its series in the state
    ``not_analysed``: the scan arrived and QA refused it (docs/qa.md); not a technical fault.

    ``also`` runs in the same transaction (the outbox rows), so a crash cannot leave a job done
    with its results never queued for delivery. With ``token`` (a worker's claim), nothing is
    recorded and :class:`~dicomnode.errors.LeaseLost` is raised unless the job is still held
    with that token.
    """
    with sessions.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise KeyError(f"job {job_id} does not exist")
        if token is not None and (job.lease_token != token or job.state != JobState.PROCESSING):
            raise LeaseLost(f"job {job_id} is no longer ours (now {job.state}, held by "
                            f"{job.worker}): its lease expired and it was taken over")
        if also is not None:
            also(session)
        job.lease_expires_at = None
        job.state = (JobState.FAILED if error else JobState.NOT_ANALYSED if not_analysed
                     else JobState.DONE)
        job.error = error or not_analysed
        job.timings_s = dict(timings_s or {})
        if outputs is not None:
            job.outputs = outputs
        job.finished_at = utcnow()
        series = session.get(Series, job.series_id)
        # An older version finishing must not overwrite the state of a newer, reopened version.
        if series is not None and series.version == job.version:
            series.state = (SeriesState.FAILED if error else SeriesState.NOT_ANALYSED
                            if not_analysed else SeriesState.DONE)
            series.reason = error or not_analysed
            series.updated_at = utcnow()


def requeue(sessions: SessionFactory, job_id: int) -> None:
    """Put a finished or failed job back in the queue (``dicomnode resend``/retries)."""
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise KeyError(f"job {job_id} does not exist")
        job.state = JobState.QUEUED
        job.error = ""
        series = session.get(Series, job.series_id)
        if series is not None and series.version == job.version:
            series.state = SeriesState.QUEUED
            series.reason = ""


def requeue_worker(sessions: SessionFactory, worker: str) -> int:
    """Re-queue the jobs of a worker that died (its supervisor knows its name) at once."""
    return release_own(sessions, (worker,))[0]


def requeue_stale(sessions: SessionFactory) -> int:
    """Re-queue jobs left ``processing`` under a lease that expired; returns how many.

    Jobs of live workers (on any host) keep their lease. Claims take such jobs over anyway;
    this makes them visible as queued at once (``status``).
    """
    with sessions.begin() as session:
        now = utcnow()
        jobs = list(session.scalars(skip_locked(select(Job).where(
            Job.state == JobState.PROCESSING,
            or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)), sessions)))
        for job in jobs:
            log.warning("job %d of %s: lease expired, re-queued", job.id, job.worker)
            job.state, job.worker = JobState.QUEUED, None
            job.lease_token = job.lease_expires_at = None
            series = session.get(Series, job.series_id)
            if series is not None and series.version == job.version:
                series.state = SeriesState.QUEUED
    return len(jobs)


def reprocess(sessions: SessionFactory, series_id: int) -> int:
    """Queue a series again as a new version (new job, new result UIDs); returns the job id.

    Refused (``ValueError``) while the series is still receiving, queued or processing.
    """
    with sessions.begin() as session:
        series = session.get(Series, series_id)
        if series is None:
            raise KeyError(f"series {series_id} does not exist")
        if series.state in (SeriesState.RECEIVING, SeriesState.QUEUED, SeriesState.PROCESSING):
            raise ValueError(f"series {series_id} is {series.state}: nothing to reprocess yet")
        series.version += 1
        series.state = SeriesState.QUEUED
        series.reason = ""
        series.updated_at = utcnow()
        job = Job(series_id=series_id, version=series.version)
        session.add(job)
        session.flush()
        log.info("series %d queued again as version %d (job %d)", series_id, series.version,
                 job.id)
        return job.id


def defer(sessions: SessionFactory, job_id: int, token: str | None, delay_s: float) -> bool:
    """Give a claimed job back to be claimed again after ``delay_s`` (a follow-up whose prior
    is still being analysed). The lease gets a fresh token, so the holder's renewals stop
    touching it; False when it was no longer ours."""
    with sessions.begin() as session:
        query = update(Job).where(Job.id == job_id, Job.state == JobState.PROCESSING)
        if token is not None:
            query = query.where(Job.lease_token == token)
        return bool(affected_rows(session.execute(
            query.values(lease_token=new_token(), lease_expires_at=expiry(delay_s),
                         worker="deferred", attempts=Job.attempts - 1)
            .execution_options(synchronize_session=False))))
