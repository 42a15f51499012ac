"""The SCP over real loopback associations: pynetdicom and DCMTK clients, storage outcomes.

Access control and TLS are in tests/reliability/test_security.py, hostile input in
tests/reliability/test_hostile.py. Every test that stores runs on SQLite and on PostgreSQL
(``node`` is ``db_node`` here); the disk watermark refuses before the database is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification, XRayRadiationDoseSRStorage
from sqlalchemy import func, select

from dicomnode.db.models import (
    AssociationCount,
    DiscardedClass,
    Instance,
    Series,
    utcnow,
)
from dicomnode.runtime.service import Node
from tests.conftest import GE_DIR, make_settings, requires
from tests.ct_series import make_series


@pytest.fixture
def node(db_node: Node) -> Node:
    """The node on SQLite and on PostgreSQL."""
    return db_node


def scu(calling: str = "TESTSCU") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(XRayRadiationDoseSRStorage)
    return ae


def store(node: Node, datasets: list[Dataset] | list[Path], **assoc_kw: object) -> list[int]:
    assoc = scu().associate("127.0.0.1", node.port, ae_title="DICOMNODE", **assoc_kw)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_echo_and_store_with_pynetdicom(node: Node, ct_template: Dataset) -> None:
    assoc = scu().associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    series = make_series(ct_template, 3)
    assert store(node, series) == [0, 0, 0]
    with node.sessions() as s:
        paths = list(s.scalars(select(Instance.path)))
    assert len(paths) == 3
    for p in paths:
        ds = pydicom.dcmread(node.settings.storage.path / p)
        assert ds.SeriesInstanceUID == series[0].SeriesInstanceUID


def test_dose_report_is_acknowledged_counted_not_stored(node: Node, ct_template: Dataset) -> None:
    ds = make_series(ct_template, 1)[0]
    ds.SOPClassUID = XRayRadiationDoseSRStorage
    ds.Modality = "SR"
    del ds.PixelData
    assert store(node, [ds]) == [0]
    with node.sessions() as s:
        assert s.get(DiscardedClass, XRayRadiationDoseSRStorage).count == 1
        assert s.scalar(select(func.count(Instance.id))) == 0
    assert not list(node.settings.storage.path.rglob("*.dcm"))


def test_disk_watermark_refuses_out_of_resources(tmp_path: Path, ct_template: Dataset) -> None:
    node = Node(make_settings(tmp_path, **{"storage.min_free_disk_mb": 10**9})).start()
    try:
        assert store(node, make_series(ct_template, 1)) == [0xA700]
    finally:
        node.stop()


@requires("echoscu")
@requires("storescu")
def test_dcmtk_clients_send_the_ge_series(node: Node, tmp_path: Path) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    subprocess.run(["echoscu", "-aec", "DICOMNODE", "127.0.0.1", str(node.port)], env=env,
                   check=True, timeout=30)
    folder = tmp_path / "in"
    shutil.copytree(GE_DIR, folder)
    (folder / "README.txt").write_text("not DICOM")  # +sp skips it instead of stopping
    subprocess.run(["storescu", "-R", "+sd", "+sp", "*.dcm", "-aec", "DICOMNODE", "127.0.0.1",
                    str(node.port), f"{folder}/"], env=env, check=True, timeout=120,
                   capture_output=True)
    with node.sessions() as s:
        assert s.scalar(select(func.count(Instance.id))) == 28


def test_enhanced_ct_is_stored_and_assembled_by_frames(node: Node, ct_template: Dataset) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pynetdicom.sop_class import LegacyConvertedEnhancedCTImageStorage

    from dicomnode.assemble.series import sweep

    series = make_series(ct_template, 12)
    enhanced = LegacyConvertedEnhancedCTImage(
        series, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(),
        instance_number=1)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(LegacyConvertedEnhancedCTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.send_c_store(enhanced).Status == 0
    assoc.release()
    node.scheduler.pause()
    done = sweep(node.sessions, node.settings.assembly, node.settings.eligibility,
                 now=utcnow() + timedelta(seconds=5))
    if not done:  # the running scheduler may have completed it first
        with node.sessions() as s:
            state = s.scalar(select(Series.state))
    else:
        state = done[0].state
    assert state == "queued"
    with node.sessions() as s:
        g = s.scalar(select(Series.geometry))
    assert g["n_frames"] == 12 and g["instances"] == 1 and g["spacing_mm"]["median"] == 5.0


def test_several_receiving_processes_share_the_port(tmp_path: Path, ct_template: Dataset,
                                                   db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    node = Node(make_settings(tmp_path, **{"node.receiver_processes": 2,
                                           "database.url": db_url})).start()
    try:
        assert len(node.receivers) == 1 and node.receivers[0].poll() is None
        batches = [make_series(ct_template, 3) for _ in range(8)]
        time.sleep(1.0)  # let the child import and bind
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda b: store(node, b), batches))
        assert results == [[0, 0, 0]] * 8
        with node.sessions() as s:
            assert s.scalar(select(func.count(Instance.id))) == 24
    finally:
        node.stop()
    assert node.receivers[0].poll() is not None
    # Both processes count under the node's name (written at the latest when each stops).
    with node.sessions() as s:
        counts = s.execute(select(AssociationCount.node, AssociationCount.result,
                                  AssociationCount.count)).all()
    assert {(n, r) for n, r, _ in counts} == {(node.name, "accepted")}
    assert sum(c for _, _, c in counts) == 8
