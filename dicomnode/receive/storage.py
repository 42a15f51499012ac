"""Durable instance storage: the file is fsynced and renamed, and its row committed, before ack.

Inputs: the encoded bytes of one received instance and its parsed dataset.
Outputs: ``storage/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` and rows in the database.
Side effects: creates folders, reopens a completed series when a late instance arrives.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicomnode.db.models import (
    DiscardedClass,
    Instance,
    ReceiveError,
    Series,
    SeriesState,
    Study,
    utcnow,
)
from dicomnode.db.session import SessionFactory
from dicomnode.errors import InstanceRejected
from dicomnode.receive import status
from dicomnode.receive.header import STORED_CLASSES, check_image, check_uid, read_header

log = logging.getLogger(__name__)
TMP_DIR = ".tmp"
OTHER_DIR = "_other"  # kept non-CT instances (keep_non_ct = true), still under storage root


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one instance: ``stored``, ``duplicate`` or ``discarded``."""

    action: str
    series_instance_uid: str = ""
    path: Path | None = None


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    # -- public -------------------------------------------------------------------------
    def store(self, encoded: bytes, ds: Dataset, *, sop_class_uid: str, sop_instance_uid: str,
              transfer_syntax: str) -> StoreOutcome:
        """Validate, write durably and record one instance. Raises InstanceRejected."""
        self._check_disk()
        ds_class = str(ds.get("SOPClassUID", ""))
        ds_instance = str(ds.get("SOPInstanceUID", ""))
        if ds_class and ds_class != sop_class_uid:
            raise InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                   f"SOP Class UID {ds_class} differs from request {sop_class_uid}")
        if ds_instance != sop_instance_uid:
            raise InstanceRejected(status.CANNOT_UNDERSTAND,
                                   "SOP Instance UID in dataset differs from request")
        sop_uid = check_uid(sop_instance_uid, "SOPInstanceUID")
        if sop_class_uid not in STORED_CLASSES and not self.keep_non_ct:
            self._count_discarded(sop_class_uid)
            return StoreOutcome("discarded")
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        if sop_class_uid not in STORED_CLASSES:
            rel = Path(OTHER_DIR) / study_uid / series_uid / f"{sop_uid}.dcm"
            self._write(encoded, rel)
            self._count_discarded(sop_class_uid)
            return StoreOutcome("discarded", series_uid, self.root / rel)
        check_image(ds, transfer_syntax)
        series_attrs, geometry = read_header(ds)
        rel = Path(study_uid) / series_uid / f"{sop_uid}.dcm"
        digest = hashlib.sha256(encoded).hexdigest()
        with self.sessions() as session:
            existing = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
            if existing is not None:
                if existing.sha256 != digest:
                    # Like Orthanc's default: the first version of an instance wins.
                    log.warning("instance re-sent with different content; kept the first copy",
                                extra={"series_uid": series_uid})
                return StoreOutcome("duplicate", series_uid, self.root / existing.path)
        self._write(encoded, rel)
        for attempt in range(3):
            try:
                with self.sessions.begin() as session:
                    self._record(session, ds, study_uid, series_uid, sop_uid, sop_class_uid,
                                 transfer_syntax, rel, len(encoded), digest, series_attrs,
                                 geometry)
                break
            except IntegrityError:
                # Another association created the same study/series/instance row first.
                if attempt == 2:
                    raise
                with self.sessions() as session:
                    if session.scalar(select(Instance.id).where(
                            Instance.sop_instance_uid == sop_uid)) is not None:
                        return StoreOutcome("duplicate", series_uid, self.root / rel)
        return StoreOutcome("stored", series_uid, self.root / rel)

    def record_existing(self, path: Path, ds: Dataset, *, encoded_size: int, digest: str) -> None:
        """Record a file already in its final place (start-up reconciliation)."""
        study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
        series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        series_attrs, geometry = read_header(ds)
        rel = path.relative_to(self.root)
        with self.sessions.begin() as session:
            self._record(session, ds, study_uid, series_uid, sop_uid, str(ds.SOPClassUID),
                         str(ds.file_meta.TransferSyntaxUID), rel, encoded_size, digest,
                         series_attrs, geometry)

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
        free_mb = shutil.disk_usage(self.root).free / 2**20
        if free_mb < self.min_free_disk_mb:
            raise InstanceRejected(status.OUT_OF_RESOURCES,
                                   f"free disk {free_mb:.0f} MB below watermark "
                                   f"{self.min_free_disk_mb} MB")

    def _write(self, encoded: bytes, rel: Path) -> None:
        """Temporary file, fsync, rename into place, fsync the folder (POSIX durable rename)."""
        final = self.root / rel
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as fh:
                fh.write(encoded)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            self._make_dirs(final.parent)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InstanceRejected(status.OUT_OF_RESOURCES, f"cannot write instance: {exc}") from exc
        if self.fsync:
            fsync_dir(final.parent)

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

    def _record(self, session: Session, ds: Dataset, study_uid: str, series_uid: str,
                sop_uid: str, sop_class_uid: str, transfer_syntax: str, rel: Path,
                size: int, digest: str, series_attrs: dict, geometry: dict) -> None:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            study = Study(study_instance_uid=study_uid,
                          patient_id=str(ds.get("PatientID", ""))[:64] or None,
                          accession_number=str(ds.get("AccessionNumber", ""))[:16] or None)
            session.add(study)
            session.flush()
        series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
        now = utcnow()
        if series is None:
            series = Series(series_instance_uid=series_uid, study_id=study.id,
                            attributes=series_attrs, state=SeriesState.RECEIVING, version=1,
                            first_received_at=now)
            session.add(series)
        elif series.state != SeriesState.RECEIVING:
            # A late instance never merges silently: the series reopens as a new version.
            series.version += 1
            series.state = SeriesState.RECEIVING
            series.reason = f"reopened: instance arrived after completion (version {series.version})"
            log.warning("late instance reopens series as version %d", series.version,
                        extra={"series_uid": series_uid})
        series.last_received_at = now
        series.instance_count = (series.instance_count or 0) + 1
        session.flush()
        session.add(Instance(sop_instance_uid=sop_uid, series_id=series.id,
                             sop_class_uid=sop_class_uid, transfer_syntax_uid=transfer_syntax,
                             path=rel.as_posix(), size_bytes=size, sha256=digest,
                             instance_number=(int(geometry["instance_number"])
                                              if geometry.get("instance_number") is not None
                                              else None),
                             geometry=geometry, series_version=series.version))

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
