"""Start-up reconciliation of the storage folder with the database after a crash.

A crash can leave: temporary files (never acknowledged: removed), a renamed file whose row was not
committed (never acknowledged, but complete and valid: adopted so nothing is lost), or a row whose
file is gone (someone deleted it: the row is removed and the loss logged).

Several nodes may share the storage folder (docs/deployment.md). Each node writes its temporary
files in its own folder (``.tmp/<node name>``, :func:`use_node_tmp`), and reconciliation removes
only those: a live peer's half-written files are never touched. Adoption is safe beside a live
peer: a renamed file is complete, and recording it is idempotent (insert-or-ignore by SOP
Instance UID), so a peer committing the same row at the same moment counts it once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from dicomnode.db.models import Instance, Series
from dicomnode.errors import InstanceRejected
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.storage import RESERVED_DIRS, TMP_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    temp_removed: int = 0
    adopted: int = 0
    missing_rows_removed: int = 0
    unreadable: int = 0


def node_tmp_name(node_name: str) -> str:
    """A folder name for a node's temporary files (its name, made safe for any file system)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", node_name) or "node"


def use_node_tmp(store: InstanceStore, node_name: str) -> None:
    """Write this node's temporary files under ``.tmp/<node name>`` (created here)."""
    store.tmp = store.root / TMP_DIR / node_tmp_name(node_name)
    store.tmp.mkdir(parents=True, exist_ok=True)


def reconcile(store: InstanceStore) -> ReconcileReport:
    """Bring files and rows back into agreement; safe to run at every start, beside live peers.

    Removes the temporary files in ``store.tmp`` only (this node's, with :func:`use_node_tmp`).
    """
    temp_removed = 0
    for tmp in store.tmp.glob("*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            temp_removed += 1
    with store.sessions() as session:
        known = {p: i for p, i in session.execute(select(Instance.path, Instance.id))}
    adopted = unreadable = 0
    on_disk: set[str] = set()
    for study_dir in store.root.iterdir():
        if not study_dir.is_dir() or study_dir.name in RESERVED_DIRS:
            continue
        for path in study_dir.glob("*/*.dcm"):
            rel = path.relative_to(store.root).as_posix()
            on_disk.add(rel)
            if rel in known:
                continue
            try:
                _adopt(store, path)
                adopted += 1
            except (InvalidDicomError, InstanceRejected, OSError, ValueError) as exc:
                unreadable += 1
                log.error("stored file %s cannot be adopted: %s", rel, exc)
    missing = [(rel, iid) for rel, iid in known.items() if rel not in on_disk]
    if missing:
        with store.sessions.begin() as session:
            for rel, iid in missing:
                inst = session.get(Instance, iid)
                if inst is None:
                    continue
                series = session.get(Series, inst.series_id)
                if series is not None:
                    series.instance_count = max(0, series.instance_count - 1)
                session.delete(inst)
                log.error("instance file missing from storage, row removed: %s", rel)
    report = ReconcileReport(temp_removed, adopted, len(missing), unreadable)
    if report != ReconcileReport():
        log.warning("storage reconciled: %s", report)
    return report


def _adopt(store: InstanceStore, path: Path) -> None:
    """Record a complete file that was renamed into place but whose row was never committed."""
    encoded = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=False)
    if path.stem != str(ds.SOPInstanceUID):
        raise ValueError("file name does not match SOP Instance UID")
    store.record_existing(path, ds, encoded_size=len(encoded),
                          digest=hashlib.sha256(encoded).hexdigest())
