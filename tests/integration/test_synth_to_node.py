"""A synthetic study is what a new user can send: the node stores it and queues it as head CT."""

from __future__ import annotations

import time
from pathlib import Path

from dicomnode.lab.synth import make_study
from dicomnode.runtime.service import Node
from dicomnode.send.scu import iter_files, send_files


def test_synthetic_study_is_received_and_queued(db_node: Node, tmp_path: Path) -> None:
    """On SQLite and on PostgreSQL (``db_node``)."""
    node = db_node
    truth = make_study(tmp_path / "study", seed=3, hemorrhage_ml=20, site="lobar", matrix=64,
                       thickness_mm=5.0)
    files = list(iter_files([truth.dicom_dir]))
    report = send_files(files, "DICOMNODE", "127.0.0.1", node.port)
    assert (report.sent, report.failed) == (truth.n_slices, 0)
    from dicomnode.db.queries import series_status

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = series_status(node.sessions)
        if rows and rows[0]["state"] != "receiving":
            break
        time.sleep(0.2)
    assert [(r["series_instance_uid"], r["state"], r["instances"]) for r in rows] == [
        (truth.series_instance_uid, "queued", truth.n_slices)]
