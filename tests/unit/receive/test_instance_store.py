"""Durable storage: write order, UID checks, idempotence, reopening, reconciliation."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import event, func, select

from dicomnode.db.models import DiscardedClass, Instance, Series
from dicomnode.db.session import make_sessions
from dicomnode.errors import InstanceRejected
from dicomnode.receive import instance_store as storage
from dicomnode.receive import status
from dicomnode.receive.checks import CT_IMAGE_STORAGE, check_uid
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.receive.reconcile import reconcile
from tests.ct_series import make_series


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def put(store: InstanceStore, ds: Dataset) -> storage.StoreOutcome:
    return store.store(encode(ds), ds, sop_class_uid=str(ds.SOPClassUID),
                       sop_instance_uid=str(ds.SOPInstanceUID),
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> InstanceStore:
    sessions = make_sessions(db_url)
    return InstanceStore(tmp_path / "storage", sessions)


def test_write_order_file_fsync_rename_dir_fsync_then_commit(
        store: InstanceStore, ct_template: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
        calls.append(f"fsync-{kind}")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", replace)
    event.listen(store.sessions.kw["bind"], "commit", lambda _c: calls.append("commit"))
    ds = make_series(ct_template, 1)[0]
    outcome = put(store, ds)
    calls.append("return")
    assert outcome.action == "stored"
    # New folders are fsynced too; what matters is the order of the essential steps.
    essential = [c for c in calls if c in ("fsync-file", "rename", "commit", "return")]
    assert essential == ["fsync-file", "rename", "commit", "return"]
    assert calls.index("rename") < len(calls) - 1 - calls[::-1].index("fsync-dir") < \
        calls.index("commit")
    assert outcome.path == store.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    assert outcome.path.read_bytes() == encode(ds)
    assert list(store.tmp.iterdir()) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2/3", "1.2..3", ".1.2", "1.2.", "",
                                 "1." * 40, "1.2.3\x00", "1.2.840 ", "1.2.a"])
def test_unsafe_uids_are_refused(bad: str) -> None:
    with pytest.raises(InstanceRejected) as exc:
        check_uid(bad, "SOPInstanceUID")
    assert exc.value.status == status.CANNOT_UNDERSTAND


def test_traversal_uid_never_reaches_disk(store: InstanceStore, ct_template: Dataset) -> None:
    ds = make_series(ct_template, 1, series_uid="1.2.3/../../../../tmp")[0]
    with pytest.raises(InstanceRejected):
        put(store, ds)
    assert not any(p.is_file() for p in store.root.rglob("*"))


def test_resend_is_idempotent_and_first_copy_wins(store: InstanceStore,
                                                   ct_template: Dataset) -> None:
    ds = make_series(ct_template, 1)[0]
    first = put(store, ds)
    assert put(store, ds).action == "duplicate"
    ds.SeriesDescription = "changed"
    assert put(store, ds).action == "duplicate"
    assert pydicom.dcmread(first.path).SeriesDescription == "Head 5mm"
    with store.sessions() as s:
        assert s.scalar(select(func.count(Instance.id))) == 1
        assert s.scalar(select(Series.instance_count)) == 1


def test_mismatched_uid_and_missing_pixels_are_refused(store: InstanceStore,
                                                       ct_template: Dataset) -> None:
    ds = make_series(ct_template, 1)[0]
    with pytest.raises(InstanceRejected) as exc:
        store.store(encode(ds), ds, sop_class_uid=CT_IMAGE_STORAGE, sop_instance_uid="1.2.3",
                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
    assert exc.value.status == status.CANNOT_UNDERSTAND
    del ds.PixelData
    with pytest.raises(InstanceRejected, match="Pixel Data") as exc:
        put(store, ds)
    assert exc.value.status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    ds = make_series(ct_template, 1)[0]
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(InstanceRejected, match="bytes"):
        put(store, ds)


def test_disk_watermark_refuses_with_out_of_resources(store: InstanceStore,
                                                      ct_template: Dataset) -> None:
    store.min_free_disk_mb = 10**9
    with pytest.raises(InstanceRejected) as exc:
        put(store, make_series(ct_template, 1)[0])
    assert exc.value.status == status.OUT_OF_RESOURCES


def test_other_classes_are_counted_not_stored(store: InstanceStore,
                                              ct_template: Dataset) -> None:
    ds = make_series(ct_template, 1)[0]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    assert put(store, ds).action == "discarded"
    assert put(store, ds).action == "discarded"
    with store.sessions() as s:
        assert s.get(DiscardedClass, ds.SOPClassUID).count == 2
        assert s.scalar(select(func.count(Instance.id))) == 0
    assert not any(p.is_file() for p in store.root.rglob("*.dcm"))
    store.keep_non_ct = True
    kept = put(store, ds)
    assert kept.path is not None and kept.path.is_file() and "_other" in kept.path.parts


def test_late_instance_reopens_series_as_new_version(store: InstanceStore,
                                                     ct_template: Dataset) -> None:
    a, b = make_series(ct_template, 2)
    put(store, a)
    with store.sessions.begin() as s:
        s.scalar(select(Series)).state = "queued"
    put(store, b)
    with store.sessions() as s:
        series = s.scalar(select(Series))
        assert (series.state, series.version, series.instance_count) == ("receiving", 2, 2)
        assert "reopened" in series.reason


def test_reconcile_removes_temp_adopts_orphans_drops_missing(store: InstanceStore,
                                                              ct_template: Dataset) -> None:
    a, b, c = make_series(ct_template, 3)
    put(store, a)
    lost = put(store, b)
    # A crash after rename but before commit: file in place, no row.
    orphan = store.root / c.StudyInstanceUID / c.SeriesInstanceUID / f"{c.SOPInstanceUID}.dcm"
    orphan.write_bytes(encode(c))
    (store.tmp / "half-written.part").write_bytes(b"partial")
    lost.path.unlink()
    report = reconcile(store)
    assert (report.temp_removed, report.adopted, report.missing_rows_removed) == (1, 1, 1)
    with store.sessions() as s:
        uids = set(s.scalars(select(Instance.sop_instance_uid)))
        assert uids == {a.SOPInstanceUID, c.SOPInstanceUID}
        assert s.scalar(select(Series.instance_count)) == 2
    assert reconcile(store) == type(report)()
