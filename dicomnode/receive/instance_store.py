"""Durable instance storage: the file is fsynced and renamed, and its row committed, before ack.

Inputs: the encoded bytes of one received instance and its parsed dataset.
Outputs: ``storage/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` and rows in the database.
Side effects: creates folders, reopens a completed series when a late instance arrives.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from dicomnode.db.models import (
    DiscardedClass,
    Instance,
    PendingInstance,
    ReceiveError,
    Series,
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
from dicomnode.receive.files import Buffer, FileWriter, Write
from dicomnode.receive.header import Header
from dicomnode.receive.recorder import Record, Recorder
from dicomnode.storage import TMP_DIR, fsync_path, instance_relpath

log = logging.getLogger(__name__)
Decoded = Dataset | Header
# How long a handler waits for another association that is storing the same instance.
_SAME_INSTANCE_WAIT_S = 10.0


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
        self.files = FileWriter(self.root, self.tmp, fsync=fsync)
        self.recorder = Recorder(sessions.kw["bind"], fsync_dir=fsync_path if fsync else None)
        self._disk_checked_at = -1.0
        self._disk_ok = True
        # A store dropped without close() still stops its threads: they never outlive it.
        self._abandon = weakref.finalize(self, _stop_threads, self.recorder, self.files)

    def close(self) -> None:
        """Stop the writer threads (after the SCP has stopped), waiting for them; idempotent."""
        self._abandon.detach()
        self.recorder.close()
        self.files.close()

    # -- public -------------------------------------------------------------------------
    def store(self, encoded: bytes | Sequence[Buffer], ds: Decoded | Callable[[], Decoded],
              *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> StoreOutcome:
        """Validate, write durably and record one instance. Raises InstanceRejected.

        ``encoded`` is the file as bytes, or its parts (preamble and meta, then the data set)
        so the received buffer is written without another copy. ``ds`` may be a callable that
        decodes the data set (or reads its plain header, receive/header.py): the file is then
        written and hashed while it is decoded and checked, and fsynced once it has its name
        while the row is committed (receive/files.py). Returns only once the file, its name and
        its row are durable.
        """
        parts = [encoded] if isinstance(encoded, bytes | bytearray | memoryview) else encoded
        self._check_disk()
        keep = sop_class_uid in STORED_CLASSES or self.keep_non_ct
        write = self.files.start(parts) if keep else None
        try:
            return self._store(parts, ds, write, sop_class_uid, sop_instance_uid,
                               transfer_syntax)
        finally:
            if write is not None:
                write.discard()  # the temporary name (the final one is a second link)

    def _store(self, parts: Sequence[Buffer], ds: Decoded | Callable[[], Decoded],
               write: Write | None, sop_class_uid: str,
               sop_instance_uid: str, transfer_syntax: str) -> StoreOutcome:
        if callable(ds):
            try:
                ds = ds()
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt input
                raise InstanceRejected(status.CANNOT_UNDERSTAND, f"dataset cannot be decoded: "
                                       f"{type(exc).__name__}: {exc}") from exc
            if isinstance(ds, Dataset):  # a Header was read only if it is encoded as it says
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
        if write is None:
            self._count_discarded(sop_class_uid)
            return StoreOutcome("discarded")
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        if sop_class_uid not in STORED_CLASSES:
            final = self.root / instance_relpath(study_uid, series_uid, sop_uid, other=True)
            self.files.replace(write, final)
            self._count_discarded(sop_class_uid)
            return StoreOutcome("discarded", series_uid, final)
        check_image(ds, transfer_syntax)
        series_attrs, geometry = read_header(ds)
        rel = instance_relpath(study_uid, series_uid, sop_uid)
        final = self.root / rel
        existed = final.exists()
        # Like Orthanc's default: the first copy of an instance wins; a re-send is a no-op.
        if existed and self._durable_duplicate(sop_uid, final):
            return StoreOutcome("duplicate", series_uid, final)
        if not self._link(write, final, sop_uid):
            return StoreOutcome("duplicate", series_uid, final)
        committed = self.recorder.submit_nowait(Record(
            study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
            sop_class_uid=sop_class_uid, transfer_syntax=transfer_syntax,
            rel_path=rel.as_posix(), folder=final.parent,
            size_bytes=sum(len(p) for p in parts), sha256=write.digest(),
            series_attrs=series_attrs, geometry=geometry,
            patient_id=str(ds.get("PatientID", ""))[:64] or None,
            accession_number=str(ds.get("AccessionNumber", ""))[:16] or None,
            maybe_known=existed))
        # The file's fsync, here, while the recorder fsyncs the folder and commits the row.
        try:
            write.sync()
        except InstanceRejected:
            with contextlib.suppress(Exception):
                committed.result()
            self._undo(sop_uid, final)
            raise
        try:
            new = committed.result()
        except Exception:
            if self._row_state(sop_uid) is None:
                final.unlink(missing_ok=True)  # nothing records it: a re-send must find no file
            raise
        self.recorder.confirm(sop_uid)
        return StoreOutcome("stored" if new else "duplicate", series_uid, final)

    def _link(self, write: Write, final: Path, sop_uid: str) -> bool:
        """Link the written file into place; False when another association stored it first."""
        deadline = time.monotonic() + _SAME_INSTANCE_WAIT_S
        while not self.files.link(write, final):
            # Linked by another association, perhaps not yet recorded: wait for its row.
            if self._durable_duplicate(sop_uid, final):
                return False
            if time.monotonic() > deadline:
                raise InstanceRejected(status.PROCESSING_FAILURE, "the same instance is being "
                                       "stored by another association; send it again")
            time.sleep(0.01)
        return True

    def record_existing(self, path: Path, ds: Dataset, *, encoded_size: int, digest: str) -> None:
        """Record a durable file already in its final place (start-up reconciliation)."""
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
            accession_number=str(ds.get("AccessionNumber", ""))[:16] or None, maybe_known=True,
            pending=False))

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

    def _row_state(self, sop_uid: str) -> str | None:
        """``"durable"`` or ``"pending"`` when the instance has a row, else None."""
        with self.sessions() as session:
            row = session.execute(
                select(Instance.id, PendingInstance.sop_instance_uid)
                .outerjoin(PendingInstance,
                           PendingInstance.sop_instance_uid == Instance.sop_instance_uid)
                .where(Instance.sop_instance_uid == sop_uid)).first()
        if row is None:
            return None
        return "durable" if row[1] is None else "pending"

    def _durable_duplicate(self, sop_uid: str, final: Path) -> bool:
        """True when the instance is recorded and its file is durable (made so if pending)."""
        state = self._row_state(sop_uid)
        if state is None or not final.exists():
            return False
        if state == "pending" and self.fsync:
            # Its own store may still be running: make file and name durable here, as it will.
            fsync_path(final)
            fsync_path(final.parent)
        return True

    def _undo(self, sop_uid: str, final: Path) -> None:
        """Remove a recorded instance whose file could not be made durable (never acknowledged)."""
        try:
            with self.sessions.begin() as session:
                inst = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
                if inst is not None:
                    series = session.get(Series, inst.series_id)
                    if series is not None:
                        series.instance_count = max(0, series.instance_count - 1)
                    session.delete(inst)
                session.execute(delete(PendingInstance).where(
                    PendingInstance.sop_instance_uid == sop_uid))
            final.unlink(missing_ok=True)
        except Exception:  # noqa: BLE001 - start-up reconciliation checks the pending mark
            log.exception("could not remove an instance whose file is not durable")

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


def _stop_threads(recorder: Recorder, files: FileWriter) -> None:
    """Tell the threads of a store that was dropped without close() to stop (no waiting)."""
    recorder.close(wait=False)
    files.close(wait=False)
