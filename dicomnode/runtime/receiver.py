"""An extra receiving process: the same SCP and durable store on the same port (SO_REUSEPORT).

Started by ``Node`` when ``[node] receiver_processes`` > 1, so several associations use several
cores. It runs no scheduled jobs (the parent does) and dies with its parent.
"""

from __future__ import annotations

import logging

from dicomnode.config import Settings
from dicomnode.db.session import open_sessions
from dicomnode.logs import setup_logging
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.receive.reconcile import use_node_tmp
from dicomnode.receive.scp import start_scp
from dicomnode.runtime.procs import read_payload, stop_on_signals

log = logging.getLogger(__name__)


def main() -> int:
    settings: Settings = read_payload()
    setup_logging(settings.logging.level)
    stopped = stop_on_signals()
    sessions = open_sessions(settings)
    store = InstanceStore(settings.storage.path, sessions,
                          min_free_disk_mb=settings.storage.min_free_disk_mb,
                          keep_non_ct=settings.storage.keep_non_ct, fsync=settings.storage.fsync)
    # The parent's name (Node passes it): temporary files, pending marks and association
    # counts are the node's, so its start-up reconciliation checks what a child left behind.
    use_node_tmp(store, settings.node_name)
    server = start_scp(settings, store, sessions, reuse_port=True)
    stopped.wait()
    server.shutdown()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
