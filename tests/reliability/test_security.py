"""Security suite: access control, TLS, log privacy, storage confinement, secrets, systemd.

Each check adds its result to ``CHECKS``; the module's last teardown records them all. Access
control runs on SQLite and on PostgreSQL (``db_url``); the other checks concern files, sockets
and logs, not the database.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from dicomnode.config import DatabaseSettings
from dicomnode.db.models import AssociationEvent
from dicomnode.db.session import make_sessions
from dicomnode.errors import InstanceRejected
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.runtime.service import Node
from tests.conftest import free_port, make_settings, requires
from tests.ct_series import make_series
from tests.integration.test_scp import scu
from tests.reliability.conftest import record
from tests.reliability.harness import ServeProcess, wait_for_state
from tests.unit.runtime.test_systemd import UNIT

CHECKS: dict[str, object] = {}
PASSWORD = "S3cr3t-Pa55word"
PATIENT_NAME = "Secretname^Testpatient"
PATIENT_ID = "PID-0000-SECRET"


@pytest.fixture(scope="module", autouse=True)
def _record_checks() -> Iterator[None]:
    yield
    record("security", "access control, TLS, log privacy, storage confinement, secrets and "
           "systemd-analyze, each on loopback or offline", checks=dict(CHECKS),
           passed=sum(1 for v in CHECKS.values() if v is True),
           systemd_exposure=CHECKS.get("systemd_exposure"))


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


def test_access_control_rejects_with_reasons(tmp_path: Path, db_url: str) -> None:
    """On SQLite and on PostgreSQL (``db_url``): each rejection is recorded as a row."""
    settings = make_settings(tmp_path / "storage", **{
        "access.allowed_calling_aets": ("GOODSCU",), "access.allowed_networks": ("127.0.0.2/32",),
        "database.url": db_url})
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
    CHECKS.update(unknown_calling_ae_rejected=True, wrong_called_ae_rejected=True,
                  unknown_ip_rejected=True, rejections_recorded=len(reasons))


def test_default_settings_accept_loopback(node: Node) -> None:
    assert _rejection(node, "ANYONE") is None


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _client_tls(server_cert: Path, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return ctx


@requires("openssl")
def test_tls_with_and_without_client_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server")
    ccert, ckey = _self_signed(tmp_path, "client")
    settings = make_settings(tmp_path, **{"tls.enabled": True, "tls.certificate": cert,
                                          "tls.private_key": key, "tls.ca_certificates": ccert,
                                          "tls.require_client_certificate": True})
    node = Node(settings).start()
    try:
        ae = scu()
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE",
                             tls_args=(_client_tls(cert, (ccert, ckey)), "127.0.0.1"))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE",
                             tls_args=(_client_tls(cert), "127.0.0.1"))
        assert not assoc.is_established
        plain = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        assert not plain.is_established
    finally:
        node.stop()
    CHECKS.update(tls_client_certificate_required=True, tls_without_certificate_refused=True,
                  plain_refused_on_tls_port=True)


@requires("openssl")
def test_tls_server_only_and_silent_peer_blocks_nobody(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "server")
    settings = make_settings(tmp_path, **{"tls.enabled": True, "tls.certificate": cert,
                                          "tls.private_key": key})
    node = Node(settings).start()
    try:
        # A peer that opens TCP on the TLS port and never sends its ClientHello.
        with socket.create_connection(("127.0.0.1", node.port)):
            t0 = time.monotonic()
            assoc = scu().associate("127.0.0.1", node.port, ae_title="DICOMNODE",
                                    tls_args=(_client_tls(cert), "127.0.0.1"))
            waited_s = time.monotonic() - t0
            assert assoc.is_established and assoc.send_c_echo().Status == 0
            assoc.release()
        assert waited_s < 5, f"a silent TLS peer delayed another association {waited_s:.1f} s"
    finally:
        node.stop()
    CHECKS.update(tls_without_client_certificates=True, silent_tls_peer_blocks_nobody=True)


def _identified_series(template: Dataset, n: int, **attrs: object) -> list[Dataset]:
    return make_series(template, n, PatientName=PATIENT_NAME, PatientID=PATIENT_ID,
                       OtherPatientIDs=PATIENT_ID + "-2", **attrs)


def test_no_patient_identifiers_in_info_logs(tmp_path: Path, ct_template: Dataset) -> None:
    storage = tmp_path / "storage"
    serve = ServeProcess(storage, free_port())
    try:
        ae = AE(ae_title="PRIVACY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", serve.port, ae_title="DICOMNODE")
        good = _identified_series(ct_template, 10)
        bad = _identified_series(ct_template, 2, SeriesInstanceUID="1.2.3/../x")
        short = _identified_series(ct_template, 3)  # rejected: too few instances
        for ds in short:
            ds.BitsAllocated = 12
        statuses = [int(assoc.send_c_store(ds).Status) for ds in [*good, *bad, *short]]
        assoc.release()
        assert statuses == [0] * 10 + [0xC000] * 2 + [0xA900] * 3
        wait_for_state(storage, "queued")
    finally:
        assert serve.stop() == 0
    text = serve.log.read_text()
    assert "series complete" in text and "C-STORE refused" in text
    leaked = [v for v in (PATIENT_NAME, "Secretname", PATIENT_ID) if v in text]
    CHECKS["patient_identifiers_in_info_log"] = len(leaked)
    assert not leaked


def test_storage_paths_stay_under_the_root(tmp_path: Path, ct_template: Dataset) -> None:
    root = tmp_path / "deep" / "storage"
    store = InstanceStore(root, make_sessions(f"sqlite:///{tmp_path / 'db.sqlite'}"),
                          keep_non_ct=True, fsync=False)
    evil = ["../../etc", "/etc/passwd", "1.2/../../3", "..", "1.2.3\\..\\..\\x", "1." * 40,
            "1.2.3\x00/x", "~/x", "1.2.3/ ", ""]
    refused = 0
    try:
        for value in evil:
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                for sop_class in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"):
                    ds = make_series(ct_template, 1)[0]
                    ds.SOPClassUID = sop_class
                    setattr(ds, keyword, value)
                    with pytest.raises(InstanceRejected):
                        store.store(b"\x00" * 132, ds, sop_class_uid=sop_class,
                                    sop_instance_uid=str(ds.SOPInstanceUID),
                                    transfer_syntax="1.2.840.10008.1.2.1")
                    refused += 1
    finally:
        store.close()
    outside = [p for p in tmp_path.rglob("*") if p.is_file()
               and not p.is_relative_to(root) and not p.name.startswith("db.sqlite")]
    stored = [p for p in root.rglob("*.dcm")]
    CHECKS.update(traversal_attempts_refused=refused, files_outside_root=len(outside))
    assert not outside and not stored


def test_database_password_is_never_shown(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://dicomnode:{PASSWORD}@127.0.0.1:1/dicomnode"
    settings = make_settings(tmp_path / "storage")
    shown = repr(replace(settings, database=DatabaseSettings(url=url)))
    assert PASSWORD not in shown and "***" in shown
    config = tmp_path / "pg.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[worker]\nenabled = false\n')
    # Driver missing (config error) or server unreachable (connection error): either way the
    # node must stop with a message that does not carry the password.
    out = subprocess.run([sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config),
                          "--storage", str(tmp_path / "storage"), "--port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert PASSWORD not in out.stdout + out.stderr
    assert "***" in out.stdout + out.stderr or "connection" in (out.stdout + out.stderr).lower()
    CHECKS["database_password_in_output"] = False


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    # verify fails when the ExecStart binary does not exist on this machine: point it at one.
    unit = tmp_path / "dicomnode.service"
    unit.write_text(re.sub(r"^ExecStart=.*$", f"ExecStart={shutil.which('true')}",
                           UNIT.read_text(), flags=re.M))
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", security.stdout)
    assert m, security.stdout + security.stderr
    exposure, verdict = float(m.group(1)), m.group(2)
    CHECKS["systemd_exposure"] = f"{exposure} {verdict}"
    assert exposure <= 2.0 and verdict in ("SAFE", "OK")

