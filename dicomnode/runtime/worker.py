"""The processing worker: claims queued jobs and runs ``pipeline.process_series`` on each.

``dicomnode serve`` starts it as a child process (it dies with its parent) and restarts it if it
exits; ``dicomnode worker`` runs it alone, e.g. on a GPU host that sees the same database and
storage. The model is loaded once per process. The worker runs no scheduled jobs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from dicomnode.config import Settings
from dicomnode.db.session import open_sessions
from dicomnode.errors import ModelError
from dicomnode.jobs.heartbeat import beat, gone
from dicomnode.jobs.queue import claim_next
from dicomnode.logs import setup_logging

log = logging.getLogger(__name__)
EXIT_MODEL_ERROR = 3
HEARTBEAT_S = 5.0


def worker_name(pid: int) -> str:
    """How a worker is named on the jobs it claims (host and process id)."""
    return f"{socket.gethostname()}:{pid}"


def run_worker(settings: Settings, stop: threading.Event | None = None, *,
               poll_s: float = 1.0, max_jobs: int | None = None) -> int:
    """Process jobs until ``stop`` is set (or ``max_jobs`` are done); returns an exit code."""
    stop = stop or threading.Event()
    # First, so that a database at another schema revision is refused before the model loads.
    sessions = open_sessions(settings)
    from dicomnode.pipeline import make_context, process_series

    try:
        ctx = make_context(settings)
    except ModelError as exc:
        # Jobs stay queued (nothing is lost); the supervisor retries with backoff.
        log.error("worker cannot load its model: %s", exc)
        return EXIT_MODEL_ERROR
    name = worker_name(os.getpid())
    log.info("worker %s ready (backend %s)", name, settings.segmentation.backend)
    done = 0
    last_beat = 0.0
    while not stop.is_set():
        if time.monotonic() - last_beat >= HEARTBEAT_S:
            beat(sessions, name, "worker")
            last_beat = time.monotonic()
        ref = claim_next(sessions, settings.storage.path, name)
        if ref is None:
            stop.wait(poll_s)
            continue
        process_series(ref, ctx, sessions)
        done += 1
        if max_jobs is not None and done >= max_jobs:
            break
    gone(sessions, name)
    return 0


def main() -> int:
    """Entry point of the child process started by ``dicomnode serve``."""
    from dicomnode.runtime.procs import read_payload, stop_on_signals

    settings: Settings = read_payload()
    setup_logging(settings.logging.level)
    return run_worker(settings, stop_on_signals(), poll_s=settings.worker.poll_interval_s)


if __name__ == "__main__":
    raise SystemExit(main())
