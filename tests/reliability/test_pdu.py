"""Malformed PDUs on a raw socket, association floods and the association limit.

Each malformed input must end in a clear protocol outcome (A-ASSOCIATE-RJ, A-ABORT or the
connection closed) within the configured timeouts, and the node must then still serve a good
client. PDU layouts: PS3.8 9.3 (A-ASSOCIATE-RQ 9.3.2, P-DATA-TF 9.3.5, A-ABORT 9.3.8).

The flood runs on SQLite and on PostgreSQL (``db_url``: every refusal is an association event
row); the malformed PDUs end before anything is stored, so they run on SQLite.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from dicomnode.db.models import AssociationEvent
from dicomnode.runtime.service import Node
from tests.conftest import make_settings
from tests.ct_series import make_series
from tests.reliability.conftest import record, scale, scenario

TIMEOUT_S = 2.0  # the node's ACSE, DIMSE and network timeouts in this suite
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


# -- PDU encoding (big endian lengths, PS3.8 9.3.1) -----------------------------------
def item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def pdu(kind: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body) if length is None else length) + body


def associate_rq(*, version: int = 1, called: bytes = b"DICOMNODE",
                 abstract: bytes = VERIFICATION) -> bytes:
    context = (struct.pack(">BBBB", 1, 0, 0, 0) + item(0x30, abstract)
               + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x51, struct.pack(">I", 16384))
    body = (struct.pack(">HH", version, 0) + called.ljust(16) + b"RAWSCU".ljust(16)
            + b"\x00" * 32 + item(0x10, APP_CONTEXT) + item(0x20, context) + item(0x50, user))
    return pdu(0x01, body)


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return pdu(0x04, pdv)


def store_command(sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = CT_STORAGE
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_instance_uid
    buf = DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = True, True
    write_dataset(buf, cmd)
    body = buf.getvalue()
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body  # (0000,0000) group length first


# -- a raw client -------------------------------------------------------------------------
def outcome(sock: socket.socket, bound_s: float) -> str:
    """What the node answered: 'rejected', 'aborted', 'accepted', 'closed' or 'hung'."""
    sock.settimeout(bound_s)
    try:
        head = sock.recv(6)
    except TimeoutError:
        return "hung"
    except ConnectionResetError:
        return "closed"
    if not head:
        return "closed"
    return {0x02: "accepted", 0x03: "rejected", 0x07: "aborted"}.get(head[0], f"pdu {head[0]}")


def exchange(port: int, *chunks: bytes, pause_s: float = 0.0,
             bound_s: float = 3 * TIMEOUT_S) -> list[str]:
    """Send each chunk and read the node's answer after it (until it closes the connection)."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=bound_s) as sock:
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                answers.append("closed")
                break
            time.sleep(pause_s)
            answers.append(outcome(sock, bound_s))
            if answers[-1] != "accepted":
                break
            sock.recv(65536)  # the rest of the A-ASSOCIATE-AC
    return answers


def serves(node: Node, template: Dataset) -> bool:
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_store(make_series(template, 1)[0]).Status) == 0
    finally:
        assoc.release()


@pytest.fixture
def fast_node(tmp_path: Path, db_url: str):
    settings = make_settings(tmp_path / "storage", **{
        "node.acse_timeout_s": TIMEOUT_S, "node.dimse_timeout_s": TIMEOUT_S,
        "node.network_timeout_s": TIMEOUT_S, "node.max_associations": 8,
        "database.url": db_url})
    node = Node(settings).start()
    yield node
    node.stop()


OK_RQ = associate_rq()
CT_RQ = associate_rq(abstract=CT_STORAGE.encode())
# name: (what is sent, one answer expected per step)
# Fixed seeds: with os.urandom the first byte could be a real PDU type (an A-ABORT,
# or an A-ASSOCIATE-RQ promising gigabytes), which changes the right answer.
_NOISE = random.Random(0).randbytes(1024)  # first byte 0xCD: no PDU type
MALFORMED: dict[str, tuple[list[bytes], list[str]]] = {
    "random_bytes": ([_NOISE], ["aborted"]),
    "unknown_pdu_type": ([pdu(0x7F, b"\x00" * 10)], ["aborted"]),
    # Promises 4 GiB, sends 16 bytes and waits: dropped after the network timeout.
    "length_0xffffffff_then_stall": ([pdu(0x01, b"\x00" * 16, length=0xFFFFFFFF)], ["closed"]),
    # Only the fixed header: no application context, presentation contexts or user information.
    "associate_rq_without_items": ([pdu(0x01, OK_RQ[6:74])], ["rejected"]),
    "associate_rq_item_overruns_pdu": ([OK_RQ[:-8] + item(0x51, b"\x00" * 4)[:2]
                                        + b"\xff\xff" + b"\x00" * 4], ["aborted"]),
    "protocol_version_2": ([associate_rq(version=2)], ["rejected"]),
    "called_ae_wrong": ([associate_rq(called=b"NOTME")], ["rejected"]),
    "p_data_before_association": ([p_data(1, 0x03, b"\x00" * 20)], ["aborted"]),
    "release_before_association": ([pdu(0x05, b"\x00" * 4)], ["aborted"]),
    "abort_before_association": ([pdu(0x07, b"\x00" * 4)], ["closed"]),
    # pynetdicom's state machine fails on it and drops the connection without an A-ABORT.
    "dimse_garbage_command": ([CT_RQ, p_data(1, 0x03, random.Random(1).randbytes(64))],
                              ["accepted", "closed"]),
    "dimse_overlong_sop_uid": ([CT_RQ, p_data(1, 0x03, store_command("1." * 99 + "1"))],
                               ["accepted", "aborted"]),
    "dimse_unknown_context_id": ([CT_RQ, p_data(99, 0x03, store_command("1.2.3"))],
                                 ["accepted", "aborted"]),
    "second_associate_rq": ([OK_RQ, OK_RQ], ["accepted", "aborted"]),
}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_malformed_pdus_end_clearly_and_node_keeps_serving(fast_node: Node,
                                                         ct_template: Dataset) -> None:
    results: dict[str, list[str]] = {}
    problems = {}
    for name, (chunks, expected) in MALFORMED.items():
        t0 = time.monotonic()
        results[name] = exchange(fast_node.port, *chunks)
        if results[name] != expected:
            problems[name] = f"{results[name]}, expected {expected}"
        if time.monotonic() - t0 > 4 * TIMEOUT_S:
            problems[name] = f"took {time.monotonic() - t0:.1f} s"
        if not serves(fast_node, ct_template):
            problems[name] = "node stopped serving"
    # A silent peer (connects, sends nothing) is dropped after the ACSE timeout.
    t0 = time.monotonic()
    results["silent_peer"] = exchange(fast_node.port, b"", bound_s=4 * TIMEOUT_S)
    silent_s = time.monotonic() - t0
    if results["silent_peer"] != ["closed"] or silent_s > 3 * TIMEOUT_S:
        problems["silent_peer"] = f"{results['silent_peer']} after {silent_s:.1f} s"
    record("malformed_pdus", "raw loopback socket per case, node timeouts 2 s; a good C-STORE "
           "after every case", cases=len(results),
           outcomes=dict(Counter(a[-1] for a in results.values())),
           per_case={k: v[-1] for k, v in results.items()},
           silent_peer_dropped_after_s=round(silent_s, 1), node_still_serving=not any(
               v == "node stopped serving" for v in problems.values()), problems=problems)
    assert not problems, problems


def _connect_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def _associate_abort(port: int) -> str:
    """'established' (then aborted), 'limit' (refused: local limit exceeded) or what else."""
    ae = AE(ae_title="FLOOD")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if assoc.is_established:
        assoc.abort()
        return "established"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return "limit" if (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2) else "rejected"
    return "aborted" if assoc.is_aborted else "failed"


def _threads_settle(baseline: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while threading.active_count() > baseline + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return threading.active_count()


def test_association_flood_and_limit(fast_node: Node, ct_template: Dataset, db_url: str) -> None:
    port = fast_node.port
    baseline = threading.active_count()
    connects = scale(200, 2000)
    associations = scale(100, 1000)
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: _connect_close(port), range(connects)))
        flood = Counter(pool.map(lambda _: _associate_abort(port), range(associations)))
    flood_s = time.monotonic() - t0
    threads_after = _threads_settle(baseline, 4 * TIMEOUT_S)
    assert serves(fast_node, ct_template)

    # The limit: max_associations held open, the next one is refused (local limit exceeded,
    # PS3.8 9.3.4: transient, service provider (presentation), reason 2); after a release,
    # a new one is accepted again.
    limit = fast_node.settings.node.max_associations
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", port, ae_title="DICOMNODE") for _ in range(limit)]
    try:
        assert all(a.is_established for a in held)
        extra = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        refusal = (rj.result, rj.result_source, rj.diagnostic)
        assert refusal == (2, 3, 2)
        held.pop().release()
        time.sleep(0.2)
        again = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert again.is_established
        again.release()
    finally:
        for a in held:
            a.release()
    with fast_node.sessions() as s:
        recorded = [e.reason for e in s.scalars(select(AssociationEvent))]
    assert any("limit" in r for r in recorded), recorded
    assert serves(fast_node, ct_template)
    record(scenario("association_flood", db_url), "8 client threads on loopback: TCP connect+close, then "
           "associate+abort; then max_associations held open and one more requested",
           tcp_connects=connects, associations=associations,
           association_outcomes=dict(flood), flood_seconds=round(flood_s, 1),
           threads_before=baseline, threads_after=threads_after,
           max_associations=limit, over_limit_refusal=list(refusal),
           refusals_recorded=len(recorded), node_still_serving=True)
    # Each request is either served or refused with the limit's reason; nothing else.
    assert set(flood) <= {"established", "limit"} and flood["established"] > 0, flood
    assert threads_after <= baseline + 2
