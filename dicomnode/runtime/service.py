"""Wires the receiving side together: storage, database, reconciliation, SCP and scheduler.

``Node.start()`` is what ``dicomnode serve`` runs; tests start it on port 0 and read ``port``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory, open_sessions
from dicomnode.jobs.leases import heartbeat, register_node, release_own
from dicomnode.jobs.queue import requeue_stale, requeue_worker
from dicomnode.jobs.scheduler import build_scheduler
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.receive.reconcile import reconcile, use_node_tmp
from dicomnode.receive.scp import start_scp
from dicomnode.runtime.cluster import check_sharing
from dicomnode.runtime.procs import spawn_python
from dicomnode.runtime.procs import stop as stop_process
from dicomnode.runtime.worker import worker_name_of
from dicomnode.send.outbox import deliver_due

log = logging.getLogger(__name__)


class Node:
    """The receiving process: SCP threads, durable store, completion sweep and retention."""

    def __init__(self, settings: Settings, *, sessions: SessionFactory | None = None,
                 start_worker: bool = False) -> None:
        self.settings = settings
        settings.storage.path.mkdir(parents=True, exist_ok=True)
        check_sharing(settings)  # SQLite on a shared folder is refused
        # Refuses (SchemaError) a database at another schema revision unless auto_upgrade.
        self._own_engine = sessions is None  # disposed by stop()
        self.sessions = sessions or open_sessions(settings)
        self.store = InstanceStore(settings.storage.path, self.sessions,
                                   min_free_disk_mb=settings.storage.min_free_disk_mb,
                                   keep_non_ct=settings.storage.keep_non_ct,
                                   fsync=settings.storage.fsync)
        self.server: ThreadedAssociationServer | None = None
        self.name = settings.node_name
        self.scheduler = build_scheduler(self.sessions, settings)
        self.children: list[_Child] = []
        self.start_worker = start_worker
        if settings.destinations:
            self.scheduler.add_job(self._deliver, "interval",
                                   seconds=settings.delivery.interval_s, id="deliver",
                                   max_instances=1, coalesce=True)
        self._stopped = threading.Event()

    def _deliver(self) -> None:
        deliver_due(self.sessions, self.settings, sender=self.name)

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("node not started")
        return int(self.server.server_address[1])

    def start(self) -> Node:
        """Reconcile storage, release our previous run's claims, then listen and schedule.

        A start that fails stops what it had started (threads, children) before raising.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self.settings.node.port == 0 and not self.settings.node.name:
            # Port 0 resolves only when listening: name the node after the port it gets.
            self.name = f"{self.settings.node_name}-{id(self):x}"
        use_node_tmp(self.store, self.name)
        reconcile(self.store)
        register_node(self.sessions, self.name, "serve")
        # Our previous run is gone: its claims go back at once (a live peer's are left alone).
        release_own(self.sessions, (worker_name_of(self.name),), senders=(self.name,))
        requeue_stale(self.sessions)
        extra = self.settings.node.receiver_processes - 1
        self.server = start_scp(self.settings, self.store, self.sessions, reuse_port=extra > 0)
        # Children bind the port we actually got (port 0 resolves here first).
        child_settings = replace(self.settings, node=replace(self.settings.node, port=self.port,
                                                             name=self.name))
        self.children = [_Child("dicomnode.runtime.receiver", child_settings) for _ in range(extra)]
        if self.start_worker:
            # A worker that dies mid-job leaves it claimed: give it back to the queue.
            self.children.append(_Child("dicomnode.runtime.worker", child_settings, on_exit=lambda _:
                                        requeue_worker(self.sessions, worker_name_of(self.name))))
        if self.settings.web.port:
            # The console in its own process: it can never slow reception, and a port it
            # cannot bind is logged by it while reception goes on.
            self.children.append(_Child("dicomnode.runtime.console", child_settings))
        for child in self.children:
            child.start()
        if self.children:
            self.scheduler.add_job(self._supervise, "interval", seconds=1,
                                   id="supervise_children", max_instances=1)
        self.scheduler.add_job(heartbeat, "interval", args=[self.sessions, self.name], seconds=10,
                               id="heartbeat", max_instances=1, coalesce=True)
        self.scheduler.start()

    @property
    def receivers(self) -> list[subprocess.Popen[bytes]]:
        return [c.proc for c in self.children if c.module == "dicomnode.runtime.receiver" and c.proc]

    @property
    def console(self) -> subprocess.Popen[bytes] | None:
        return next((c.proc for c in self.children if c.module == "dicomnode.runtime.console"),
                    None)

    @property
    def worker(self) -> subprocess.Popen[bytes] | None:
        return next((c.proc for c in self.children if c.module == "dicomnode.runtime.worker"), None)

    def _supervise(self) -> None:
        """Restart a child that exited (with backoff, so a broken model does not spin)."""
        for child in self.children:
            if not self._stopped.is_set():
                child.restart_if_exited()

    def stop(self) -> None:
        """Stop accepting, let running associations end, stop the scheduler."""
        self._stopped.set()
        # Children first: a child restarted by the supervisor was spawned from a scheduler
        # thread, and PR_SET_PDEATHSIG fires when that *thread* exits, so shutting the
        # scheduler down first would SIGKILL it instead of letting it stop cleanly.
        for child in self.children:
            child.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.store.close()
        if self._own_engine:
            self.sessions.kw["bind"].dispose()
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


class _Child:
    """A supervised child process (receiver or worker) and its restart backoff."""

    def __init__(self, module: str, settings: Settings,
                 on_exit: Callable[[int], object] | None = None) -> None:
        self.module = module
        self.on_exit = on_exit
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.failures = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.proc = spawn_python(self.module, self.settings)
        self.started = time.monotonic()

    def restart_if_exited(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if self.next_start == 0.0:
            # Quick repeated exits back off up to a minute; a long healthy run resets it.
            self.failures = 0 if now - self.started > 60 else self.failures + 1
            delay = min(60.0, 2.0 ** self.failures)
            self.next_start = now + delay
            log.error("%s (pid %d) exited with %s; restarting in %.0f s", self.module,
                      self.proc.pid, self.proc.returncode, delay)
            if self.on_exit is not None:
                self.on_exit(self.proc.pid)
        if now >= self.next_start:
            self.next_start = 0.0
            self.start()

    def stop(self) -> None:
        # A worker mid-job is not waited for long: its job is re-queued at the next start.
        if self.proc is not None:
            stop_process(self.proc, timeout_s=10.0)
