"""Wires the receiving side together: storage, database, reconciliation, SCP and scheduler.

``Node.start()`` is what ``dicomnode serve`` runs; tests start it on port 0 and read ``port``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from dataclasses import replace
from types import FrameType

from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory, make_sessions
from dicomnode.jobs.queue import requeue_stale
from dicomnode.jobs.scheduler import build_scheduler
from dicomnode.procs import spawn_python
from dicomnode.procs import stop as stop_process
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
        self.server: ThreadedAssociationServer | None = None
        self.scheduler = build_scheduler(self.sessions, settings)
        self.receivers: list[subprocess.Popen[bytes]] = []
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
        extra = self.settings.node.receiver_processes - 1
        self.server = start_scp(self.settings, self.store, self.sessions, reuse_port=extra > 0)
        if extra:
            # Children bind the port we actually got (port 0 resolves here first).
            child_settings = replace(self.settings,
                                     node=replace(self.settings.node, port=self.port))
            self.receivers = [spawn_python("dicomnode.receive.child", child_settings)
                              for _ in range(extra)]
            self.scheduler.add_job(self._supervise, "interval", seconds=2, args=[child_settings],
                                   id="supervise_receivers", max_instances=1)
        self.scheduler.start()
        return self

    def _supervise(self, child_settings: Settings) -> None:
        """Restart a receiving child that died (its instances were durable before each ack)."""
        for i, proc in enumerate(self.receivers):
            if proc.poll() is not None and not self._stopped.is_set():
                log.error("receiver process %d exited with %s; restarting it", proc.pid,
                          proc.returncode)
                self.receivers[i] = spawn_python("dicomnode.receive.child", child_settings)

    def stop(self) -> None:
        """Stop accepting, let running associations end, stop the scheduler."""
        self._stopped.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        for proc in self.receivers:
            stop_process(proc)
        if self.server is not None:
            self.server.shutdown()
            self.server = None
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
