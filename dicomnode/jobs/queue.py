"""The processing job queue in the database: claim, finish, requeue.

A claim is a conditional UPDATE (``... WHERE state = 'queued'``), so two workers, even on two hosts
sharing a PostgreSQL database, never run the same job. Jobs left ``processing`` by a worker that
died are re-queued at start-up (``requeue_stale``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicomnode.db.dml import affected_rows
from dicomnode.db.models import Instance, Job, JobState, Series, SeriesState, Study, utcnow
from dicomnode.db.session import SessionFactory
from dicomnode.domain import SeriesRef

log = logging.getLogger(__name__)


def claim_next(sessions: SessionFactory, storage_root: Path, worker: str) -> SeriesRef | None:
    """Claim the oldest queued job; returns None when the queue is empty."""
    while True:
        with sessions.begin() as session:
            job_id = session.scalar(select(Job.id).where(Job.state == JobState.QUEUED)
                                    .order_by(Job.id).limit(1))
            if job_id is None:
                return None
            now = utcnow()
            claimed = affected_rows(session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(state=JobState.PROCESSING, worker=worker, claimed_at=now,
                        attempts=Job.attempts + 1)
                .execution_options(synchronize_session=False)))
            if not claimed:
                continue  # another worker was faster; try the next one
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
                             instance_paths=paths)


def finish(sessions: SessionFactory, job_id: int, *, error: str = "",
           timings_s: dict[str, Any] | None = None, outputs: dict[str, Any] | None = None,
           also: Callable[[Session], object] | None = None) -> None:
    """Mark a claimed job done (``error`` empty) or failed (``error`` is ``Type: message``).

    ``also`` runs in the same transaction (the outbox rows), so a crash cannot leave a job done
    with its results never queued for delivery.
    """
    with sessions.begin() as session:
        if also is not None:
            also(session)
        job = session.get(Job, job_id)
        if job is None:
            raise KeyError(f"job {job_id} does not exist")
        job.state = JobState.FAILED if error else JobState.DONE
        job.error = error
        job.timings_s = dict(timings_s or {})
        if outputs is not None:
            job.outputs = outputs
        job.finished_at = utcnow()
        series = session.get(Series, job.series_id)
        # An older version finishing must not overwrite the state of a newer, reopened version.
        if series is not None and series.version == job.version:
            series.state = SeriesState.FAILED if error else SeriesState.DONE
            series.reason = error
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
    """Re-queue the jobs a worker that died had claimed (its supervisor knows its name)."""
    n = _requeue_processing(sessions, Job.worker == worker)
    if n:
        log.warning("re-queued %d jobs of stopped worker %s", n, worker)
    return n


def requeue_stale(sessions: SessionFactory) -> int:
    """Re-queue jobs left ``processing`` by a worker that died; returns how many."""
    n = _requeue_processing(sessions)
    if n:
        log.warning("re-queued %d jobs left processing by a stopped worker", n)
    return n


def _requeue_processing(sessions: SessionFactory, *criteria: Any) -> int:
    with sessions.begin() as session:
        jobs = list(session.scalars(select(Job).where(Job.state == JobState.PROCESSING,
                                                      *criteria)))
        for job in jobs:
            job.state = JobState.QUEUED
            job.worker = None
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
