"""``dicomnode serve`` as a real process: the new user's path, and SIGKILL in mid-transfer.

The SIGKILL case runs on SQLite and on PostgreSQL (``db_url``): it is the one where the database
must hold every acknowledged instance. The new user's path is the default configuration (SQLite
in the storage folder) and the process-tree case does not depend on the database; each whole
``serve`` run costs seconds, so they run on SQLite only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from dicomnode.db.models import Instance
from dicomnode.db.session import make_sessions
from tests.conftest import GE_DIR, free_port, requires
from tests.ct_series import make_series, write_series
from tests.reliability.harness import (
    RECEIVE_ONLY,
    ServeProcess,
    children,
    wait_for_state,
    wait_gone,
    wait_until,
    with_database,
)


@requires("storescu")
def test_new_user_sends_ge_series_and_status_shows_queued_job(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    node = ServeProcess(storage, free_port())
    try:
        folder = tmp_path / "in"
        shutil.copytree(GE_DIR, folder)
        (folder / "notes.txt").write_text("not DICOM")
        subprocess.run(["storescu", "-R", "+sd", "+sp", "*.dcm", "-aec", "DICOMNODE", "127.0.0.1",
                        str(node.port), f"{folder}/"], env={**os.environ, "TCP_NODELAY": "1"},
                       check=True, capture_output=True, timeout=120)
        rows = wait_for_state(storage, "queued")
        assert len(rows) == 1
        row = rows[0]
        assert row["instances"] == 28 and row["job_id"] == 1 and row["reason"] == ""
        assert row["tilt_deg"] == pytest.approx(18.5, abs=0.1)
        for key in ("series_instance_uid", "study_instance_uid", "updated_at"):
            assert row[key]
        # echo and send through our own CLI as well
        cli = [sys.executable, "-m", "dicomnode.cli"]
        peer = f"DICOMNODE@127.0.0.1:{node.port}"
        subprocess.run([*cli, "echo", peer], check=True, capture_output=True, timeout=60)
        sent = subprocess.run([*cli, "send", str(folder), "--to", peer], check=True,
                              capture_output=True, text=True, timeout=120)
        assert "sent 28, failed 0, skipped 2" in sent.stdout  # LICENSE and notes.txt
    finally:
        assert node.stop() == 0
    # Patient identifiers never reach the log at the default level (INFO).
    log_text = node.log.read_text()
    assert "series complete" in log_text
    assert "QMNx85rKkkg" not in log_text and "REMOVED" not in log_text


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(tmp_path: Path, ct_template: Dataset,
                                                            db_url: str) -> None:
    storage = tmp_path / "storage"
    port = free_port()
    series = make_series(ct_template, 80)
    files = write_series(series, tmp_path / "in")
    config = with_database(RECEIVE_ONLY, db_url, tmp_path / "node.toml")
    node = ServeProcess(storage, port, config=config)
    acked: list[str] = []
    ae = AE(ae_title="CRASHTEST")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    killer = threading.Timer(0.0, node.kill)
    for ds, path in zip(series, files, strict=True):
        if len(acked) == 25 and not killer.is_alive() and node.proc.poll() is None:
            killer.start()  # kill while the next instances are in flight
        try:
            rsp = assoc.send_c_store(path)
        except Exception:  # noqa: BLE001 - the association dies with the server
            break
        if not assoc.is_established or rsp is None or "Status" not in rsp:
            break
        if rsp.Status == 0:
            acked.append(ds.SOPInstanceUID)
    killer.join()
    assert node.proc.poll() is not None, "server was not killed"
    assert 25 <= len(acked) < len(series)
    # Restart at once on the same port: nothing orphaned holds it.
    node = ServeProcess(storage, port, config=config)
    sessions = make_sessions(db_url)
    try:
        with sessions() as s:
            rows = {i.sop_instance_uid: i.path for i in s.scalars(select(Instance))}
        for uid in acked:
            assert uid in rows, "acknowledged instance missing from the database"
            assert (storage / rows[uid]).is_file(), "acknowledged instance missing from disk"
        # Temporary files live in a folder per node (.tmp/<node name>); none is left.
        assert not [p for p in (storage / ".tmp").rglob("*") if p.is_file()]
        # The sender retries everything; re-sent instances are idempotent and the series completes.
        ae2 = AE(ae_title="CRASHTEST")
        ae2.add_requested_context(CTImageStorage)
        assoc = ae2.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert [assoc.send_c_store(p).Status for p in files] == [0] * len(files)
        assoc.release()
        rows_status = wait_for_state(storage, "queued", config=config)
        assert rows_status[0]["instances"] == len(series)
    finally:
        sessions.kw["bind"].dispose()
        node.stop()


def test_receiver_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text("[node]\nreceiver_processes = 3\n[worker]\nenabled = true\n")
    node = ServeProcess(tmp_path / "storage", free_port(), config=config)
    kids = wait_until(lambda: len(children(node.pid)) >= 3 and children(node.pid), 20,
                      "two more receivers and the worker")
    assert len(kids) == 3
    node.kill()
    wait_gone(kids, timeout_s=10)
