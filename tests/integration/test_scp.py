"""The SCP over real loopback associations: pynetdicom and DCMTK clients, access control, errors."""

from __future__ import annotations

import io
import os
import shutil
import ssl
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification, XRayRadiationDoseSRStorage
from sqlalchemy import func, select

from dicomnode.db.models import (
    AssociationEvent,
    DiscardedClass,
    Instance,
    ReceiveError,
    Series,
    utcnow,
)
from dicomnode.service import Node
from tests.conftest import GE_DIR, make_series, make_settings, requires


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


def _rejection(node: Node, calling: str = "TESTSCU", called: str = "DICOMNODE",
               bind: str | None = None) -> tuple[int, int, int] | None:
    kw = {"bind_address": (bind, 0)} if bind else {}
    assoc = scu(calling).associate("127.0.0.1", node.port, ae_title=called, **kw)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def test_access_control_rejects_with_reasons(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"access.allowed_calling_aets": ("GOODSCU",),
                                          "access.allowed_networks": ("127.0.0.2/32",)})
    node = Node(settings).start()
    try:
        # Calling AE allowed and source address allowed: accepted.
        assert _rejection(node, "GOODSCU", bind="127.0.0.2") is None
        # Unknown calling AE: rejected-permanent, service-user, calling AE not recognised.
        assert _rejection(node, "BADSCU", bind="127.0.0.2") == (1, 1, 3)
        # Wrong called AE: called AE not recognised.
        assert _rejection(node, "GOODSCU", called="SOMEONE", bind="127.0.0.2") == (1, 1, 7)
        # Address outside the allowed networks: rejected-permanent, no reason given.
        assert _rejection(node, "GOODSCU", bind="127.0.0.1") == (1, 1, 1)
        with node.sessions() as s:
            reasons = [e.reason for e in s.scalars(select(AssociationEvent))]
        assert len(reasons) == 3 and any("allowed networks" in r for r in reasons)
    finally:
        node.stop()


def test_default_settings_accept_loopback(node: Node) -> None:
    assert _rejection(node, "ANYONE") is None


def test_corrupt_and_traversal_instances_are_refused_and_recorded(
        node: Node, ct_template: Dataset, tmp_path: Path) -> None:
    good, evil = make_series(ct_template, 2)
    evil.SeriesInstanceUID = "1.2.3/../../../etc"
    # A file whose dataset bytes after the header are garbage; pynetdicom sends files as-is.
    corrupt = tmp_path / "corrupt.dcm"
    buf = io.BytesIO()
    good.save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    # Keep the UIDs pynetdicom needs to address the request; garble what follows them.
    start = data.rindex(good.SOPInstanceUID.encode()) + 80
    data[start:] = os.urandom(len(data) - start)
    corrupt.write_bytes(bytes(data))
    statuses = store(node, [evil, corrupt, good])
    assert statuses[0] == 0xC000 and statuses[1] != 0 and statuses[2] == 0
    with node.sessions() as s:
        errors = list(s.scalars(select(ReceiveError)))
        assert len(errors) == 2
        assert any("SeriesInstanceUID" in e.reason for e in errors)
        assert s.scalar(select(func.count(Instance.id))) == 1
    # Nothing escaped the storage root.
    assert not (node.settings.storage.path.parent / "etc").exists()
    # The node keeps serving.
    assert store(node, make_series(ct_template, 1)) == [0]


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


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@requires("openssl")
def test_tls_with_and_without_client_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server")
    ccert, ckey = _self_signed(tmp_path, "client")
    settings = make_settings(tmp_path, **{"tls.enabled": True, "tls.certificate": cert,
                                          "tls.private_key": key, "tls.ca_certificates": ccert,
                                          "tls.require_client_certificate": True})
    node = Node(settings).start()
    try:
        def ctx(with_cert: bool) -> ssl.SSLContext:
            c = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
            if with_cert:
                c.load_cert_chain(str(ccert), str(ckey))
            return c

        ae = scu()
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE",
                             tls_args=(ctx(True), "127.0.0.1"))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE",
                             tls_args=(ctx(False), "127.0.0.1"))
        assert not assoc.is_established
        plain = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        assert not plain.is_established
    finally:
        node.stop()


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


def test_several_receiving_processes_share_the_port(tmp_path: Path, ct_template: Dataset) -> None:
    from concurrent.futures import ThreadPoolExecutor

    node = Node(make_settings(tmp_path, **{"node.receiver_processes": 2})).start()
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
