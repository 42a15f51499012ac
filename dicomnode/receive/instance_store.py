"""Durable instance storage: the file is fsynced and renamed, and its row committed, before ack.

Inputs: the encoded bytes of one received instance and its parsed dataset.
Outputs: ``storage/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` and rows in the database.
Side effects: creates folders, reopens a completed series when a late instance arrives.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dicomnode.db.models import (
    DiscardedClass,
    Instance,
    ReceiveError,
    utcnow,
)
from dicomnode.db.session import SessionFactory
from dicomnode.errors import InstanceRejected
from dicomnode.receive import status
from dicomnode.receive.checks import (
    STORED_CLASSES,
    check_encoding,
    check_image,
    check_uid,
    read_header,
)
from dicomnode.receive.recorder import Record, Recorder
from dicomnode.storage import TMP_DIR, fsync_dir, instance_relpath

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one instance: ``stored``, ``duplicate`` or ``discarded``."""

    action: str
    series_instance_uid: str = ""
    path: Path | None = None


class InstanceStore:
    """Writes received instances durably and records them; one per process, thread-safe."""

    def __init__(self, root: Path, sessions: SessionFactory, *, min_free_disk_mb: int = 0,
                 keep_non_ct: bool = False, fsync: bool = True) -> None:
        self.root = Path(root)
        self.sessions = sessions
        self.min_free_disk_mb = min_free_disk_mb
        self.keep_non_ct = keep_non_ct
        self.fsync = fsync
        self.tmp = self.root / TMP_DIR
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Writes files while the handler thread decodes and checks the data set.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dicomnode-write")
        self.recorder = Recorder(sessions.kw["bind"], fsync_dir=fsync_dir if fsync else None)
        self._disk_checked_at = -1.0
        self._disk_ok = True

    def close(self) -> None:
        """Stop the writer threads (after the SCP has stopped)."""
        self.recorder.close()
        self._pool.shutdown(wait=True)

    # -- public -------------------------------------------------------------------------
    def store(self, encoded: bytes | Sequence[bytes | memoryview], ds: Dataset | Callable[[], Dataset],
              *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> StoreOutcome:
        """Validate, write durably and record one instance. Raises InstanceRejected.

        ``encoded`` is the file as bytes, or its parts (preamble and meta, then the data set)
        so the received buffer is written without another copy. ``ds`` may be a callable that
        decodes the data set: the file is then written and fsynced while it is decoded and
        checked (the fsync waits on the disk, not on the interpreter).
        """
        parts = [encoded] if isinstance(encoded, bytes | bytearray | memoryview) else encoded
        self._check_disk()
        keep = sop_class_uid in STORED_CLASSES or self.keep_non_ct
        pending = self._pool.submit(self._write_tmp, parts) if keep else None
        try:
            outcome = self._store(parts, ds, pending, sop_class_uid, sop_instance_uid,
                                  transfer_syntax)
        finally:
            if pending is not None:
                # Whatever was not renamed into place is removed (rejected or duplicate).
                with contextlib.suppress(InstanceRejected, OSError):
                    pending.result()[0].unlink(missing_ok=True)
        return outcome

    def _store(self, parts: Sequence[bytes | memoryview], ds: Dataset | Callable[[], Dataset],
               pending: Future[tuple[Path, str]] | None, sop_class_uid: str,
               sop_instance_uid: str, transfer_syntax: str) -> StoreOutcome:
        if callable(ds):
            try:
                ds = ds()
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
                raise InstanceRejected(status.CANNOT_UNDERSTAND, f"dataset cannot be decoded: "
                                       f"{type(exc).__name__}: {exc}") from exc
            check_encoding(ds, transfer_syntax)
        ds_class = str(ds.get("SOPClassUID", ""))
        ds_instance = str(ds.get("SOPInstanceUID", ""))
        if ds_class and ds_class != sop_class_uid:
            raise InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                   f"SOP Class UID {ds_class} differs from request {sop_class_uid}")
        if ds_instance != sop_instance_uid:
            raise InstanceRejected(status.CANNOT_UNDERSTAND,
                                   "SOP Instance UID in dataset differs from request")
        sop_uid = check_uid(sop_instance_uid, "SOPInstanceUID")
        if pending is None:
            self._count_discarded(sop_class_uid)
            return StoreOutcome("discarded")
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        if sop_class_uid not in STORED_CLASSES:
            rel = instance_relpath(study_uid, series_uid, sop_uid, other=True)
            self._place(pending, rel)
            if self.fsync:
                fsync_dir((self.root / rel).parent)
            self._count_discarded(sop_class_uid)
            return StoreOutcome("discarded", series_uid, self.root / rel)
        check_image(ds, transfer_syntax)
        series_attrs, geometry = read_header(ds)
        rel = instance_relpath(study_uid, series_uid, sop_uid)
        final = self.root / rel
        existed = final.exists()
        if existed and self._known(sop_uid):
            # Like Orthanc's default: the first copy of an instance wins; a re-send is a no-op.
            return StoreOutcome("duplicate", series_uid, final)
        digest = self._place(pending, rel)
        new = self.recorder.submit(Record(
            study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
            sop_class_uid=sop_class_uid, transfer_syntax=transfer_syntax,
            rel_path=rel.as_posix(), folder=final.parent, size_bytes=sum(len(p) for p in parts),
            sha256=digest, series_attrs=series_attrs, geometry=geometry,
            patient_id=str(ds.get("PatientID", ""))[:64] or None,
            accession_number=str(ds.get("AccessionNumber", ""))[:16] or None,
            maybe_known=existed))
        return StoreOutcome("stored" if new else "duplicate", series_uid, final)

    def record_existing(self, path: Path, ds: Dataset, *, encoded_size: int, digest: str) -> None:
        """Record a file already in its final place (start-up reconciliation)."""
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        series_attrs, geometry = read_header(ds)
        self.recorder.submit(Record(
            study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
            rel_path=path.relative_to(self.root).as_posix(), folder=path.parent,
            size_bytes=encoded_size, sha256=digest, series_attrs=series_attrs,
            geometry=geometry, patient_id=str(ds.get("PatientID", ""))[:64] or None,
            accession_number=str(ds.get("AccessionNumber", ""))[:16] or None, maybe_known=True))

    def record_error(self, *, status_code: int, reason: str, calling_ae: str = "",
                     peer: str = "", sop_instance_uid: str = "") -> None:
        """Record a refused instance; never raises (the refusal must still be returned)."""
        try:
            with self.sessions.begin() as session:
                session.add(ReceiveError(status=status_code, reason=reason[:2000],
                                         calling_ae_title=calling_ae[:16], peer_address=peer[:64],
                                         sop_instance_uid=sop_instance_uid[:64]))
        except Exception:  # noqa: BLE001 - the database may be the thing that failed
            log.exception("could not record receive error %r", reason)

    # -- steps --------------------------------------------------------------------------
    def _check_disk(self) -> None:
        if self.min_free_disk_mb <= 0:
            return
        # statvfs once a second is enough: a single instance cannot fill the watermark.
        now = time.monotonic()
        if now - self._disk_checked_at >= 1.0:
            free_mb = shutil.disk_usage(self.root).free / 2**20
            self._disk_ok = free_mb >= self.min_free_disk_mb
            self._free_mb = free_mb
            self._disk_checked_at = now
        if not self._disk_ok:
            raise InstanceRejected(status.OUT_OF_RESOURCES,
                                   f"free disk {self._free_mb:.0f} MB below watermark "
                                   f"{self.min_free_disk_mb} MB")

    def _known(self, sop_uid: str) -> bool:
        with self.sessions() as session:
            return session.scalar(select(Instance.id).where(
                Instance.sop_instance_uid == sop_uid)) is not None

    def _write_tmp(self, parts: Sequence[bytes | bytearray | memoryview]) -> tuple[Path, str]:
        """Write and fsync a temporary file; returns its path and the SHA-256 of the content."""
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as fh:
                for part in parts:
                    fh.write(part)
                    digest.update(part)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InstanceRejected(status.OUT_OF_RESOURCES, f"cannot write instance: {exc}") from exc
        return tmp, digest.hexdigest()

    def _place(self, pending: Future[tuple[Path, str]], rel: Path) -> str:
        """Rename the fsynced temporary file into place; returns its SHA-256.

        The folder fsync that makes the rename durable is done by the recorder, once per batch,
        before the rows are committed (or by the caller for files without rows).
        """
        tmp, digest = pending.result()
        final = self.root / rel
        try:
            self._make_dirs(final.parent)
            os.replace(tmp, final)
        except OSError as exc:
            raise InstanceRejected(status.OUT_OF_RESOURCES, f"cannot write instance: {exc}") from exc
        return digest

    def _make_dirs(self, folder: Path) -> None:
        if folder.is_dir():
            return
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for created in reversed(missing):
                fsync_dir(created.parent)

    def _count_discarded(self, sop_class_uid: str) -> None:
        for attempt in range(3):
            try:
                with self.sessions.begin() as session:
                    row = session.get(DiscardedClass, sop_class_uid[:64])
                    if row is None:
                        session.add(DiscardedClass(sop_class_uid=sop_class_uid[:64], count=1))
                    else:
                        row.count += 1
                        row.last_at = utcnow()
                return
            except IntegrityError:
                if attempt == 2:
                    raise
