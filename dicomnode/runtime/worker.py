"""The processing worker: claims queued jobs and runs ``pipeline.process_series`` on each.

``dicomnode serve`` starts it as a child process (it dies with its parent) and restarts it if it
exits; ``dicomnode worker`` runs it alone, e.g. on a GPU host that sees the same database and
storage. The model is loaded once per process. The worker runs no scheduled jobs.

Each claim is a lease (``[worker] lease_s``), renewed every ``renew_s`` while the job runs; a
worker whose lease was taken over (it stalled, or the database was away for longer than the
lease) cannot record its result. A worker that starts releases the claims of its previous run
(same name) at once.
"""

from __future__ import annotations

import logging
import os
import threading

from sqlalchemy.exc import SQLAlchemyError

from dicomnode.config import Settings
from dicomnode.db.models import Job
from dicomnode.db.session import open_sessions
from dicomnode.errors import LeaseLost, ModelError
from dicomnode.jobs.leases import LeaseKeeper, heartbeat, register_node, release_own
from dicomnode.jobs.queue import claim_next
from dicomnode.logs import setup_logging

log = logging.getLogger(__name__)
EXIT_MODEL_ERROR = 3


def worker_name(settings: Settings, *, child: bool = False) -> str:
    """How a worker is named on the jobs it claims: the node name; ``<node>/worker`` for the
    worker that ``dicomnode serve`` starts."""
    return worker_name_of(settings.node_name) if child else settings.node_name


def worker_name_of(node_name: str) -> str:
    """The name of the worker that node ``node_name`` starts as its child."""
    return f"{node_name}/worker"


def run_worker(settings: Settings, stop: threading.Event | None = None, *,
               poll_s: float = 1.0, max_jobs: int | None = None, name: str | None = None) -> int:
    """Process jobs until ``stop`` is set (or ``max_jobs`` are done); returns an exit code."""
    stop = stop or threading.Event()
    name = name or worker_name(settings)
    # First, so that a database at another schema revision is refused before the model loads.
    sessions = open_sessions(settings)
    # Our previous run (same name) is gone: its jobs go back to the queue now, not at expiry.
    release_own(sessions, (name,))
    register_node(sessions, name, "worker")
    from dicomnode.pipeline import make_context, process_series

    try:
        ctx = make_context(settings)
    except ModelError as exc:
        # Jobs stay queued (nothing is lost); the supervisor retries with backoff.
        log.error("worker cannot load its model: %s", exc)
        return EXIT_MODEL_ERROR
    log.info("worker %s ready (backend %s, pid %d)", name, settings.segmentation.backend,
             os.getpid())
    w = settings.worker
    done = 0
    while not stop.is_set():
        try:
            ref = claim_next(sessions, settings.storage.path, name, lease_s=w.lease_s)
            if ref is None:
                heartbeat(sessions, name)
                stop.wait(poll_s)
                continue
        except SQLAlchemyError as exc:  # the database is away (restart, failover): wait
            log.warning("worker %s cannot reach the database: %s", name, type(exc).__name__)
            stop.wait(max(poll_s, 1.0))
            continue
        try:
            with LeaseKeeper(sessions, Job, ref.lease_token or "", lease_s=w.lease_s,
                             renew_s=w.renew_s):
                process_series(ref, ctx, sessions)
        except LeaseLost as exc:
            log.error("result of job %d not recorded: %s", ref.job_id, exc)
        except SQLAlchemyError as exc:
            # The result could not be recorded: the job stays claimed and is taken over when
            # its lease expires (or at once when this worker restarts).
            log.error("result of job %d not recorded (database: %s); it will be retried",
                      ref.job_id, type(exc).__name__)
            stop.wait(max(poll_s, 1.0))
        done += 1
        if max_jobs is not None and done >= max_jobs:
            break
    return 0


def main() -> int:
    """Entry point of the child process started by ``dicomnode serve``."""
    from dicomnode.runtime.procs import read_payload, stop_on_signals

    settings: Settings = read_payload()
    setup_logging(settings.logging.level)
    return run_worker(settings, stop_on_signals(), poll_s=settings.worker.poll_interval_s,
                      name=worker_name(settings, child=True))


if __name__ == "__main__":
    raise SystemExit(main())
