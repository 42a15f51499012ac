"""SIGKILL at the points of the overlapped write path, then what a power cut could leave.

A child process stores one instance and kills itself at a chosen point, before the store could
return (so the instance was never acknowledged). A process kill keeps the page cache, so the
parent then cuts the file short, as a power cut before its fsync reached the disk could have.
Reconciliation must then drop whatever is incomplete, keep whatever is complete, and a re-send
must store the instance again.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from dicomnode.db.models import Instance, PendingInstance, Series
from dicomnode.db.session import make_sessions
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.receive.reconcile import reconcile
from tests.ct_series import make_series

# Where the child dies: after the batch's commit (row + pending mark committed, folder fsynced,
# file fsync perhaps still running), or after the link (file named, no row yet).
CHILD = textwrap.dedent("""
    import os, signal, sys
    import pydicom
    from dicomnode.db.session import make_sessions
    from dicomnode.receive import files, recorder
    from dicomnode.receive.instance_store import InstanceStore

    storage, source, point = sys.argv[1], sys.argv[2], sys.argv[3]
    if point == "after_commit":
        real = recorder.Recorder._transaction

        def transaction(self, *args):
            real(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)

        recorder.Recorder._transaction = transaction
    else:
        real_link = files.FileWriter.link

        def link(self, write, final):
            digest = real_link(self, write, final)
            os.kill(os.getpid(), signal.SIGKILL)

        files.FileWriter.link = link
    store = InstanceStore(storage, make_sessions(f"sqlite:///{storage}/db.sqlite"))
    ds = pydicom.dcmread(source)
    store.store(open(source, "rb").read(), ds, sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
    sys.exit(3)  # never reached: the store must not return before the kill
""")


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _killed_store(tmp_path: Path, ds: Dataset, point: str) -> tuple[Path, Path]:
    storage = tmp_path / "storage"
    storage.mkdir()
    source = tmp_path / "source.dcm"
    source.write_bytes(_encode(ds))
    done = subprocess.run([sys.executable, "-c", CHILD, str(storage), str(source), point],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr  # killed before the store returned
    final = storage / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert final.read_bytes() == source.read_bytes()  # a kill keeps the page cache
    return storage, final


def _store(storage: Path) -> InstanceStore:
    return InstanceStore(storage, make_sessions(f"sqlite:///{storage}/db.sqlite"))


def _resend(store: InstanceStore, ds: Dataset) -> str:
    return store.store(_encode(ds), ds, sop_class_uid=str(ds.SOPClassUID),
                       sop_instance_uid=str(ds.SOPInstanceUID),
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID)).action


def _rows(store: InstanceStore) -> tuple[int, int, int]:
    with store.sessions() as s:
        return (s.scalar(select(func.count(Instance.id))) or 0,
                s.scalar(select(func.count()).select_from(PendingInstance)) or 0,
                s.scalar(select(Series.instance_count)) or 0)


@pytest.mark.parametrize("power_cut", [False, True], ids=["kill", "kill+power-cut"])
def test_kill_between_batch_commit_and_acknowledgement(tmp_path: Path, ct_template: Dataset,
                                                       power_cut: bool) -> None:
    ds = make_series(ct_template, 1)[0]
    storage, final = _killed_store(tmp_path, ds, "after_commit")
    store = _store(storage)
    try:
        assert _rows(store) == (1, 1, 1)  # committed with its pending mark
        if power_cut:
            final.write_bytes(final.read_bytes()[:4096])
        report = reconcile(store)
        if power_cut:
            assert (report.pending_kept, report.pending_removed) == (0, 1)
            assert _rows(store) == (0, 0, 0) and not final.exists()
            assert _resend(store, ds) == "stored"
        else:
            assert (report.pending_kept, report.pending_removed) == (1, 0)
            assert _rows(store) == (1, 0, 1)
            assert _resend(store, ds) == "duplicate"
        assert final.read_bytes() == _encode(ds)
        assert _rows(store)[::2] == (1, 1)
    finally:
        store.close()


@pytest.mark.parametrize("power_cut", [False, True], ids=["kill", "kill+power-cut"])
def test_kill_between_link_and_commit(tmp_path: Path, ct_template: Dataset,
                                      power_cut: bool) -> None:
    ds = make_series(ct_template, 1)[0]
    storage, final = _killed_store(tmp_path, ds, "after_link")
    store = _store(storage)
    try:
        assert _rows(store) == (0, 0, 0)  # named on disk, never recorded
        if power_cut:
            final.write_bytes(final.read_bytes()[:-700])
        report = reconcile(store)
        assert (report.adopted, report.unreadable) == ((0, 1) if power_cut else (1, 0))
        assert final.exists() != power_cut
        assert _resend(store, ds) == ("stored" if power_cut else "duplicate")
        assert final.read_bytes() == _encode(ds)
        assert _rows(store)[::2] == (1, 1)  # one row (its mark may still await confirmation)
    finally:
        store.close()
