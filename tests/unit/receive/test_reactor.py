"""The SCP's association threads wait for events instead of polling (receive/reactor.py).

Most tests stretch the longest wait to 5 s: any step whose wake-up is missing then takes
seconds instead of milliseconds, so a lost wake-up cannot hide behind the 50 ms bound.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomnode.receive import reactor
from dicomnode.runtime.service import Node
from tests.conftest import make_settings
from tests.ct_series import make_series


def _scu() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae


def _wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


@pytest.fixture
def slow_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reactor, "_MAX_WAIT_S", 5.0)


@pytest.fixture
def node_1s(tmp_path: Path) -> Iterator[Node]:
    n = Node(make_settings(tmp_path / "storage", **{"node.network_timeout_s": 1.0})).start()
    try:
        yield n
    finally:
        n.stop()


def _active(node: Node) -> int:
    assert node.server is not None
    return len(node.server.active_associations)


def test_every_step_wakes_the_threads(slow_bound: None, node: Node,
                                      ct_template: Dataset) -> None:
    t0 = time.monotonic()
    assoc = _scu().associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert [assoc.send_c_store(ds).Status for ds in make_series(ct_template, 3)] == [0, 0, 0]
    assoc.release()
    assert assoc.is_released
    assert _wait_for(lambda: _active(node) == 0, 2.0), "acceptor threads did not end"
    assert time.monotonic() - t0 < 3.0  # one missed wake-up alone would take 5 s

    assoc = _scu().associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    assoc.abort()
    assert _wait_for(lambda: _active(node) == 0, 2.0), "an abort did not end the association"


def test_idle_association_does_not_poll(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    waits = {"dul": 0, "association": 0}
    dul_wait, assoc_wait = reactor._EventDUL._wait, reactor._EventAssociation._wait_s

    def counting_dul(self: reactor._EventDUL) -> None:
        waits["dul"] += 1
        dul_wait(self)

    def counting_assoc(self: reactor._EventAssociation) -> float:
        waits["association"] += 1
        return assoc_wait(self)

    monkeypatch.setattr(reactor._EventDUL, "_wait", counting_dul)
    monkeypatch.setattr(reactor._EventAssociation, "_wait_s", counting_assoc)
    assoc = _scu().associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    before = dict(waits)
    time.sleep(1.0)
    idle = {k: waits[k] - before[k] for k in waits}
    assoc.release()
    # Bounded 50 ms waits: about 20 per second; pynetdicom's 1 ms sleeps would be ~1,000.
    assert 0 < idle["dul"] < 100 and 0 < idle["association"] < 100, idle


def test_network_timeout_still_aborts_an_idle_association(slow_bound: None,
                                                          node_1s: Node) -> None:
    assoc = _scu().associate("127.0.0.1", node_1s.port, ae_title="DICOMNODE")
    assert assoc.is_established
    t0 = time.monotonic()
    assert _wait_for(lambda: assoc.is_aborted or not assoc.is_established, 4.0)
    assert time.monotonic() - t0 < 3.0  # node.network_timeout_s = 1


def _wrapped(sock: socket.socket) -> reactor._FastSocket:
    assoc = SimpleNamespace(dul=SimpleNamespace(event_queue=queue.Queue()))
    return reactor._FastSocket(assoc, client_socket=sock)  # type: ignore[arg-type]


def test_recv_reads_whole_pdus_and_stops_at_close() -> None:
    a, b = socket.socketpair()
    payload = os.urandom(3 * 2**20 + 5)  # more than the first buffer: it has to grow

    def sender() -> None:
        for i in range(0, len(payload), 65536):
            b.sendall(payload[i:i + 65536])
        b.close()

    threading.Thread(target=sender).start()
    wrapped = _wrapped(a)
    assert wrapped.recv(len(payload)) == payload
    assert wrapped.recv(10) == b""  # peer closed
    a.close()


def test_recv_of_a_huge_promise_returns_what_came() -> None:
    a, b = socket.socketpair()
    b.sendall(b"0123456789")
    b.close()
    t0 = time.monotonic()
    assert _wrapped(a).recv(0xFFFFFFFF) == b"0123456789"  # no 4 GiB buffer up front
    assert time.monotonic() - t0 < 1.0
    a.close()


def test_ready_works_above_descriptor_1023() -> None:
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(a.fileno(), 1500))  # select() cannot take this one
    a.close()
    try:
        wrapped = _wrapped(high)
        assert not wrapped.ready
        b.sendall(b"x")
        assert _wait_for(lambda: wrapped.ready, 1.0)
    finally:
        high.close()
        b.close()


def _pdata(*items: tuple[int, bytes]) -> bytearray:
    """A P-DATA-TF PDU; each item is (context ID, message control header + fragment)."""
    body = b"".join((len(data) + 1).to_bytes(4, "big") + bytes([cx]) + data for cx, data in items)
    return bytearray(b"\x04\x00" + len(body).to_bytes(4, "big") + body)


def test_p_data_decodes_as_pynetdicom_does_without_copies() -> None:
    dul = reactor._EventAssociation(AE(), "acceptor").dul
    try:
        raw = _pdata((1, b"\x03" + b"c" * 40), (3, b"\x00" + os.urandom(5000)))
        ours, event = dul._decode_pdu(raw)
        theirs, their_event = reactor.DULServiceProvider._decode_pdu(dul, bytearray(raw))
        assert event == their_event == "Evt10"
        assert [(cx, bytes(v)) for cx, v in ours.to_primitive().presentation_data_value_list] \
            == theirs.to_primitive().presentation_data_value_list
        assert isinstance(ours.presentation_data_value_items[1].presentation_data_value,
                          memoryview)  # a view of the received buffer, not a copy
        empty_item = bytearray(b"\x04\x00\x00\x00\x00\x05\x00\x00\x00\x00\x01")
        for bad in (raw[:-3], raw + b"\x00\x00", empty_item):
            with pytest.raises(ValueError):
                dul._decode_pdu(bad)
    finally:
        dul._close_wake()


def test_presentation_contexts_are_copied_for_each_association(node: Node) -> None:
    assert node.server is not None
    original = node.server.contexts[-1]
    before = list(original.transfer_syntax)
    copied = reactor._copy_context(original)
    copied.add_transfer_syntax("1.2.840.10008.1.2.4.201")  # changes the list in place
    assert original.transfer_syntax == before
    assert copied.abstract_syntax == original.abstract_syntax
    assert copied.transfer_syntax == [*before, "1.2.840.10008.1.2.4.201"]
