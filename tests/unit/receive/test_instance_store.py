"""Durable storage: write order, UID checks, idempotence, reopening, reconciliation."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import event, func, select

from dicomnode.db.models import DiscardedClass, Instance, PendingInstance, Series
from dicomnode.db.session import make_sessions
from dicomnode.errors import InstanceRejected
from dicomnode.receive import instance_store as storage
from dicomnode.receive import status
from dicomnode.receive.checks import CT_IMAGE_STORAGE, check_uid
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.receive.reconcile import reconcile
from tests.ct_series import make_series
from tests.stores import open_store


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def put(store: InstanceStore, ds: Dataset) -> storage.StoreOutcome:
    return store.store(encode(ds), ds, sop_class_uid=str(ds.SOPClassUID),
                       sop_instance_uid=str(ds.SOPInstanceUID),
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[InstanceStore]:
    with open_store(tmp_path / "storage", db_url) as opened:
        yield opened


def _pending_marks(store: InstanceStore) -> set[str]:
    with store.sessions() as s:
        return set(s.scalars(select(PendingInstance.sop_instance_uid)))


def _wait_confirmed(store: InstanceStore, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _pending_marks(store) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _pending_marks(store), "pending marks of acknowledged instances never cleared"


def test_returns_only_once_file_name_and_row_are_durable(
        store: InstanceStore, ct_template: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_series(ct_template, 1)[0]
    expected_size = len(encode(ds))
    calls: list[str] = []
    lock = threading.Lock()
    real_fsync, real_link = os.fsync, os.link

    def note(call: str) -> None:
        with lock:
            calls.append(call)

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        real_fsync(fd)
        note(f"fsync-dir:{target}" if os.path.isdir(target) else "fsync-file")

    def link(src: str, dst: str) -> None:
        # The content is complete before the file gets its final name.
        assert os.path.getsize(src) == expected_size
        real_link(src, dst)
        note("link")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    event.listen(store.sessions.kw["bind"], "commit", lambda _c: note("commit"))
    outcome = put(store, ds)
    note("return")
    assert outcome.action == "stored" and outcome.path is not None
    # File fsync, folder fsync and commit overlap, but all end before the acknowledgement.
    done = calls[:calls.index("return")]
    assert {"fsync-file", f"fsync-dir:{outcome.path.parent}", "commit", "link"} <= set(done)
    assert done.index("link") < done.index(f"fsync-dir:{outcome.path.parent}")
    assert done.index("link") < done.index("fsync-file")  # one journal commit for both
    # The row was committed with a pending mark, dropped later in a batch of its own.
    _wait_confirmed(store)
    assert outcome.path == store.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    assert outcome.path.read_bytes() == encode(ds)
    with store.sessions() as s:  # hashed in another thread while the file was written
        assert s.scalar(select(Instance.sha256)) == hashlib.sha256(encode(ds)).hexdigest()
    assert list(store.tmp.iterdir()) == []


def test_receiving_processes_take_turns_through_a_file_lock(tmp_path: Path,
                                                            ct_template: Dataset) -> None:
    # SQLite only: PostgreSQL serialises writers itself, the file lock is SQLite's single writer.
    with open_store(tmp_path / "storage", f"sqlite:///{tmp_path / 'dicomnode.db'}") as store:
        _wait_for_the_lock(store, make_series(ct_template, 1)[0])


def _wait_for_the_lock(store: InstanceStore, ds: Dataset) -> None:
    database = store.sessions.kw["bind"].url.database
    other = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT)  # another process
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        done: list[str] = []
        sender = threading.Thread(target=lambda: done.append(put(store, ds).action))
        sender.start()
        sender.join(1.0)
        assert sender.is_alive() and not done  # waits for its turn, not in SQLite's busy sleeps
        fcntl.flock(other, fcntl.LOCK_UN)
        sender.join(10)
        assert done == ["stored"]
    finally:
        os.close(other)


def test_same_instance_on_two_associations_at_once(store: InstanceStore,
                                                   ct_template: Dataset) -> None:
    ds = make_series(ct_template, 1)[0]
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def send() -> None:
        barrier.wait()
        outcomes.append(put(store, ds).action)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["duplicate"] * 3 + ["stored"]
    with store.sessions() as s:
        assert s.scalar(select(func.count(Instance.id))) == 1
        assert s.scalar(select(Series.instance_count)) == 1
    path = store.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert path.read_bytes() == encode(ds)
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
    _wait_confirmed(store)
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


def test_a_store_dropped_without_close_stops_its_threads(tmp_path: Path) -> None:
    sessions = make_sessions(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = InstanceStore(tmp_path / "storage", sessions)
    recorder = store.recorder._thread
    assert recorder.is_alive()
    del store
    gc.collect()
    recorder.join(5)
    sessions.kw["bind"].dispose()
    assert not recorder.is_alive()


def test_a_closed_store_has_stopped_its_threads(tmp_path: Path) -> None:
    with open_store(tmp_path / "storage", f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        recorder = store.recorder._thread
    assert not recorder.is_alive()
    store.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="recorder stopped"):
        store.recorder.submit_nowait(None)  # type: ignore[arg-type]
