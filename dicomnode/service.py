"""Wires the receiving side together: storage, database, reconciliation, SCP and scheduler.

``Node.start()`` is what ``dicomnode serve`` runs; tests start it on port 0 and read ``port``.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory, make_sessions
from dicomnode.jobs.queue import requeue_stale
from dicomnode.jobs.scheduler import build_scheduler
from dicomnode.receive.reconcile import reconcile
from dicomnode.receive.scp import start_scp
from dicomnode.receive.storage import InstanceStore

log = logging.getLogger(__name__)


class Node:
    """The receiving process: SCP threads, durable store, completion sweep and retention."""

    def __init__(self, settings: Settings, *, sessions: SessionFactory | None = None) -> None:
        self.settings = settings
        settings.storage.path.mkdir(parents=True, exist_ok=True)
        self.sessions = sessions or make_sessions(
            settings.database_url, sqlite_synchronous=settings.database.sqlite_synchronous)
        self.store = InstanceStore(settings.storage.path, self.sessions,
                                   min_free_disk_mb=settings.storage.min_free_disk_mb,
                                   keep_non_ct=settings.storage.keep_non_ct,
                                   fsync=settings.storage.fsync)
        self.server = None
        self.scheduler = build_scheduler(self.sessions, settings)
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("node not started")
        return int(self.server.server_address[1])

    def start(self) -> Node:
        """Reconcile storage, re-queue stale jobs, then listen and schedule."""
        reconcile(self.store)
        requeue_stale(self.sessions)
        self.server = start_scp(self.settings, self.store, self.sessions)
        self.scheduler.start()
        return self

    def stop(self) -> None:
        """Stop accepting, let running associations end, stop the scheduler."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.store.close()
        self._stopped.set()

    def run_forever(self) -> int:
        """Serve until SIGTERM or SIGINT, then stop cleanly."""
        def _on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d received, stopping", signum)
            self._stopped.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        self._stopped.wait()
        self.stop()
        return 0
