"""APScheduler in the receiving process: completion sweep and retention.

The processing worker (a separate process) runs no scheduled jobs of its own here; delivery
retries join this scheduler when the send stage lands.
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory
from dicomnode.jobs import tasks

log = logging.getLogger(__name__)


def build_scheduler(sessions: SessionFactory, settings: Settings) -> BackgroundScheduler:
    """Create (not start) the scheduler with the receiver's periodic tasks."""
    scheduler = BackgroundScheduler(timezone="UTC")
    # One sweep at a time; a slow sweep is skipped rather than stacked.
    scheduler.add_job(tasks.completion_sweep, "interval", args=[sessions, settings],
                      seconds=settings.assembly.sweep_interval_s, id="completion_sweep",
                      max_instances=1, coalesce=True)
    if settings.storage.retention_days > 0:
        scheduler.add_job(tasks.retention, "interval", hours=6, id="retention",
                          args=[sessions, settings.storage.path, settings.storage.retention_days],
                          max_instances=1, coalesce=True)
    return scheduler
