"""Logging to stdout (journald keeps it) with the series UID and job id on every line.

The context comes from ``log_context`` (a context variable, so each pynetdicom thread and each
job has its own); ``extra={"series_uid": ...}`` on a single call wins over it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator

_series: contextvars.ContextVar[str] = contextvars.ContextVar("series_uid", default="-")
_job: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [series=%(series_uid)s job=%(job_id)s] %(message)s"


@contextlib.contextmanager
def log_context(*, series_uid: str | None = None, job_id: int | str | None = None) -> Iterator[None]:
    """Attach a series UID and/or job id to every log line inside the block."""
    tokens = []
    if series_uid is not None:
        tokens.append((_series, _series.set(series_uid or "-")))
    if job_id is not None:
        tokens.append((_job, _job.set(str(job_id))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Fill ``series_uid`` and ``job_id`` on records that do not carry them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "series_uid"):
            record.series_uid = _series.get()
        if not hasattr(record, "job_id"):
            record.job_id = _job.get()
        return True


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once per process."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_dicomnode", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(ContextFilter())
    handler._dicomnode = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO, including patient-identifying dataset summaries at
    # DEBUG; keep it at WARNING unless we debug.
    logging.getLogger("pynetdicom").setLevel("DEBUG" if level == "DEBUG" else "WARNING")
    # "skipped: maximum number of running instances reached" is the intended overlap guard.
    logging.getLogger("apscheduler").setLevel("ERROR")
    # highdicom narrates every module it copies at INFO.
    logging.getLogger("highdicom").setLevel("DEBUG" if level == "DEBUG" else "WARNING")
    # alembic names its dialect at INFO on every start; dicomnode.db.migrate logs each upgrade.
    logging.getLogger("alembic").setLevel("DEBUG" if level == "DEBUG" else "WARNING")
