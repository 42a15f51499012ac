"""Start-up reconciliation of the storage folder with the database after a crash.

A crash can leave:

* temporary files (never acknowledged): removed;
* rows still marked pending (receive/recorder.py: committed while their file's fsync ran): the
  file is checked against the row's size and SHA-256; a complete file is made durable and kept,
  anything else was never acknowledged and is removed with its row, so a re-send stores it;
* a file in its final place without a row (never acknowledged): adopted when it reads back as a
  complete, valid instance (as a received one is checked), removed otherwise;
* a row whose file is gone (someone deleted it): the row is removed and the loss logged.

Several nodes may share the storage folder (docs/deployment.md). Each node writes its temporary
files in its own folder (``.tmp/<node name>``, :func:`use_node_tmp`) and marks its pending rows
with its name; reconciliation removes and checks only those, so a live peer's half-written files
and in-flight rows are never touched. Adoption is safe beside a live peer: a complete file is
recorded idempotently (insert-or-ignore by SOP Instance UID), so a peer committing the same row
at the same moment counts it once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.db.models import Instance, PendingInstance, Series
from dicomnode.receive.checks import STORED_CLASSES, check_encoding, check_image
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.storage import RESERVED_DIRS, TMP_DIR, fsync_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    temp_removed: int = 0
    adopted: int = 0
    missing_rows_removed: int = 0
    unreadable: int = 0
    pending_kept: int = 0
    pending_removed: int = 0


def node_tmp_name(node_name: str) -> str:
    """A folder name for a node's temporary files (its name, made safe for any file system)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", node_name) or "node"


def use_node_tmp(store: InstanceStore, node_name: str) -> None:
    """Write this node's temporary files under ``.tmp/<node name>`` (created here)."""
    store.tmp = store.root / TMP_DIR / node_tmp_name(node_name)
    store.recorder.node = node_name
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
    pending_kept, pending_removed = _check_pending(store)
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
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a cut file
                # Never acknowledged; removed so that a re-send can store it again.
                unreadable += 1
                path.unlink(missing_ok=True)
                on_disk.discard(rel)
                log.error("stored file %s cannot be adopted, removed: %s", rel, exc)
    missing = [(rel, iid) for rel, iid in known.items() if rel not in on_disk]
    if missing:
        with store.sessions.begin() as session:
            for rel, iid in missing:
                if _remove_row(session, session.get(Instance, iid)):
                    log.error("instance file missing from storage, row removed: %s", rel)
    report = ReconcileReport(temp_removed, adopted, len(missing), unreadable, pending_kept,
                             pending_removed)
    if report != ReconcileReport():
        log.warning("storage reconciled: %s", report)
    return report


def _remove_row(session: Session, inst: Instance | None) -> bool:
    if inst is None:
        return False
    series = session.get(Series, inst.series_id)
    if series is not None:
        series.instance_count = max(0, series.instance_count - 1)
    session.delete(inst)
    return True


def _check_pending(store: InstanceStore) -> tuple[int, int]:
    """Keep each pending instance whose file is complete (made durable now); remove the rest."""
    kept = removed = 0
    with store.sessions.begin() as session:
        marks = list(session.scalars(select(PendingInstance).where(
            PendingInstance.node == store.recorder.node)))
        for mark in marks:
            inst = session.scalar(select(Instance).where(
                Instance.sop_instance_uid == mark.sop_instance_uid))
            session.delete(mark)
            if inst is None:
                continue
            path = store.root / inst.path
            if _complete(path, inst.size_bytes, inst.sha256):
                if store.fsync:
                    fsync_path(path)
                    fsync_path(path.parent)
                kept += 1
                continue
            _remove_row(session, inst)
            path.unlink(missing_ok=True)
            removed += 1
            log.warning("instance %s was recorded but its file is not complete (never "
                        "acknowledged): removed, a re-send stores it again", inst.path)
    return kept, removed


def _complete(path: Path, size_bytes: int, sha256: str) -> bool:
    try:
        encoded = path.read_bytes()
    except OSError:
        return False
    return len(encoded) == size_bytes and hashlib.sha256(encoded).hexdigest() == sha256


def _adopt(store: InstanceStore, path: Path) -> None:
    """Record a file linked into place whose row was never committed, if it is complete.

    Its content may not have reached the disk before a power cut, so it is checked as a received
    instance is (a truncated file fails here), then made durable before it is recorded.
    """
    encoded = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=False)
    if path.stem != str(ds.SOPInstanceUID):
        raise ValueError("file name does not match SOP Instance UID")
    syntax = str(ds.file_meta.TransferSyntaxUID)
    check_encoding(ds, syntax)
    if str(ds.SOPClassUID) in STORED_CLASSES:
        check_image(ds, syntax)
    if store.fsync:
        fsync_path(path)
        fsync_path(path.parent)
    store.record_existing(path, ds, encoded_size=len(encoded),
                          digest=hashlib.sha256(encoded).hexdigest())
