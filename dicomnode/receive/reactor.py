"""Event-driven association threads for the SCP: pynetdicom without its 1 ms polling.

pynetdicom 3.0 runs two threads per association and both poll: the upper-layer (DUL) thread
sleeps ``DULServiceProvider._run_loop_delay`` (1 ms) whenever it found nothing to do, and the
association thread sleeps 1 ms before every look at its queues. A C-STORE therefore waits about
three such sleeps between the last byte of the request and the first byte of the next one (the
request is noticed, handed to the handler, and the response noticed by the DUL thread), which
was most of the library's 5-6 ms per image (docs/benchmarks.md, "Ingest").

The subclasses here change only *how those threads wait*; the state machine, PDU decoding, DIMSE
and event handling stay pynetdicom's:

* ``_EventDUL`` waits in ``poll()`` on the socket and on a wake-up pipe that is written whenever
  another thread queues a primitive or an event for it (``_WakeQueue``), or stops it.
* ``_EventAssociation`` waits on a ``threading.Event`` set whenever a DIMSE message or an
  A-RELEASE/A-ABORT reaches its queues, or the DUL thread ends.
* ``_FastSocket`` reads a whole PDU with ``recv_into`` (pynetdicom reads 4 KiB per call and
  copies each chunk) and checks readiness with ``poll()`` (``select()`` fails on descriptors
  above 1023, which ends the association).

Both waits are bounded (``_MAX_WAIT_S``), so the ARTIM and idle timers keep their meaning and a
missed wake-up costs at most that long, never a hang. Only the acceptor side (our SCP) uses them.
"""

from __future__ import annotations

import contextlib
import copy
import os
import queue
import select
import ssl
import threading
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicomnode.receive.wire import store_response_bytes

# Longest single wait of either thread: how late a timer expiry (ARTIM, network timeout) or a
# wake-up that no queue signals (e.g. a socket closed by another thread) can be noticed.
_MAX_WAIT_S = 0.05
_POLL_IN = select.POLLIN | select.POLLPRI
_FIRST_BUFFER_BYTES = 1 << 20


class _WakeQueue(queue.Queue[Any]):
    """A queue that calls ``wake()`` after every ``put`` (so its consumer need not poll)."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _FastSocket(AssociationSocket):
    """pynetdicom's socket wrapper, reading whole PDUs and polling without ``select()``."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only when the peer closes), straight into one buffer."""
        sock = self.socket
        if sock is None:
            return bytearray()
        # A peer may promise up to 4 GiB and send nothing: grow the buffer with what arrives.
        buffer = bytearray(min(nr_bytes, _FIRST_BUFFER_BYTES))
        got = 0
        while got < nr_bytes:
            if got == len(buffer):
                buffer.extend(bytes(min(len(buffer), nr_bytes - got)))
            with memoryview(buffer) as view:
                n = sock.recv_into(view[got:])
            if not n:
                del buffer[got:]
                return buffer
            got += n
        return buffer

    @property
    def ready(self) -> bool:
        """True when data (or the peer's close) is waiting to be read."""
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            fd = sock.fileno()
            if fd < 0:
                raise OSError("socket closed")
            poller = select.poll()
            poller.register(fd, _POLL_IN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False


class _EventDUL(DULServiceProvider):
    """The DICOM upper layer thread, waiting for the socket or a wake-up instead of sleeping."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()
        self.event_queue = _WakeQueue(self._wake)
        self.to_provider_queue = _WakeQueue(self._wake)

    def _wake(self) -> None:
        """Wake the reactor from another thread (its own puts need no wake-up)."""
        if threading.get_ident() == self.ident:
            return
        with self._wake_lock:
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):  # a full pipe is awake already
                    os.write(self._wake_w, b"\0")

    def _close_wake(self) -> None:
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """P-DATA-TF without copies: its fragments are views of the received buffer.

        pynetdicom copies every received PDU three times before DIMSE appends its fragments to
        the message (``bytes()``, the PDU slice, the item slice). Other PDUs, or a bound
        ``EVT_DATA_RECV`` handler (which needs bytes), take pynetdicom's path. A malformed item
        raises, which the caller turns into Evt19 as pynetdicom does.
        """
        if bytestream[:1] != b"\x04" or self.assoc.get_handlers(evt.EVT_DATA_RECV):
            return super()._decode_pdu(bytestream)
        view = memoryview(bytestream)
        items = []
        offset, end = 6, len(view)
        while offset < end:
            if offset + 5 > end:
                raise ValueError("P-DATA-TF ends inside an item header")
            length = int.from_bytes(view[offset:offset + 4], "big")
            if length < 1 or offset + 4 + length > end:
                raise ValueError(f"P-DATA-TF item length {length} does not fit the PDU")
            item = PresentationDataValueItem()
            item.presentation_context_id = view[offset + 4]
            item.presentation_data_value = view[offset + 5:offset + 4 + length]  # type: ignore[assignment]
            items.append(item)
            offset += 4 + length
        pdu = P_DATA_TF()
        pdu.presentation_data_value_items = items
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt10"

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._wake()
        return super().stop_dul()

    def _wait(self) -> None:
        """Block until the socket is readable, another thread wakes us, or a timer is due."""
        sock = self.socket.socket if self.socket is not None else None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: poll() would not see them
        timeout_s = _MAX_WAIT_S
        if self.artim_timer._start_time is not None and self.artim_timer.timeout is not None:
            timeout_s = max(0.0, min(timeout_s, self.artim_timer.remaining))
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        fd = sock.fileno() if sock is not None else -1
        if fd >= 0:
            poller.register(fd, _POLL_IN)
        for ready_fd, _mask in poller.poll(timeout_s * 1000):
            if ready_fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)

    def run_reactor(self) -> None:
        """pynetdicom's reactor loop, with ``_wait()`` where it slept ``_run_loop_delay``."""
        try:
            self._reactor_loop()
        finally:
            self._close_wake()
            wake = getattr(self.assoc, "wake", None)
            if wake is not None:
                wake()

    def _reactor_loop(self) -> None:
        self._idle_timer.start()
        wait = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                wait = True
            if wait:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # One primitive to send or one PDU to read per loop, as pynetdicom does.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:  # noqa: BLE001 - as pynetdicom: abort and end the association
                self._abort_on_error()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                wait = True
                continue
            self.state_machine.do_action(event)
            wait = False

    def _abort_on_error(self) -> None:
        """What pynetdicom's reactor does on an exception: A-ABORT around the state machine."""
        from pynetdicom.dul import LOGGER

        LOGGER.exception("Exception in DUL.run(), aborting association")
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class _FastDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending a plain C-STORE-RSP without pydicom.

    A response with only a status (what our handler returns) is encoded by ``wire`` into one
    P-DATA; anything else, a peer whose maximum PDU is too small for it, or a bound
    ``EVT_DIMSE_SENT`` handler takes pynetdicom's own path.
    """

    def send_msg(self, primitive: Any, context_id: int) -> None:
        encoded = _plain_store_response(primitive)
        max_pdu = self.maximum_pdu_size
        if (encoded is None or (max_pdu and len(encoded) + 7 > max_pdu)
                or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
        self.dul.send_pdu(pdata)


def _plain_store_response(primitive: Any) -> bytes | None:
    """The command set of a status-only C-STORE response, or None for anything else."""
    if (not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None
            or not isinstance(primitive.Status, int) or primitive.AffectedSOPClassUID is None
            or primitive.AffectedSOPInstanceUID is None or primitive.OffendingElement
            or primitive.ErrorComment or primitive.DataSet is not None):
        return None
    return store_response_bytes(message_id=primitive.MessageIDBeingRespondedTo,
                                sop_class_uid=str(primitive.AffectedSOPClassUID),
                                sop_instance_uid=str(primitive.AffectedSOPInstanceUID),
                                status=primitive.Status)


class _EventAssociation(Association):
    """An acceptor association whose thread waits on its queues instead of sleeping 1 ms."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._wake_event = threading.Event()
        self.dul = _EventDUL(self)
        self.dul.to_user_queue = _WakeQueue(self.wake)
        self.dimse = _FastDIMSE(self)
        self.dimse.msg_queue = _WakeQueue(self.wake)
        # The timeouts were applied to the DUL that __init__ made; apply them to ours.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def wake(self) -> None:
        """Let the association thread look at its queues now."""
        self._wake_event.set()

    def kill(self) -> None:
        self.wake()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, waiting for a wake-up where it slept 1 ms."""
        from pynetdicom.association import LOGGER

        self._is_paused = False
        while not self._kill:
            self._wake_event.wait(self._wait_s())
            self._wake_event.clear()
            # Paused while a handler uses the send_*() methods (as pynetdicom).
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            # Serve every complete message that is waiting before looking again.
            while not self._kill:
                context_id, msg = self.dimse.get_msg(block=False)
                if not msg or context_id is None:
                    break
                self._serve_request(msg, context_id)
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                LOGGER.info("Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted(
                    "a-p-abort") else ""))
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

    def _wait_s(self) -> float:
        timer = self.dul._idle_timer
        if timer.timeout is None:
            return _MAX_WAIT_S
        return max(0.0, min(_MAX_WAIT_S, timer.remaining))


def _copy_context(cx: PresentationContext) -> PresentationContext:
    """A copy that negotiation may change: its only mutable part is the transfer syntax list.

    pynetdicom deep-copies the ~130 storage contexts of every new association (about 30 ms of
    CPU each, under the GIL); the UIDs in them are immutable.
    """
    new = copy.copy(cx)
    new._transfer_syntax = list(cx._transfer_syntax)
    return new


class EventRequestHandler(RequestHandler):
    """pynetdicom's request handler, creating event-driven associations.

    ``_create_association`` is pynetdicom 3.0's, with our association and socket classes and
    cheaper copies of the presentation contexts.
    """

    def _create_association(self) -> Association:
        assoc = _EventAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(_FastSocket(assoc, client_socket=self.request))
        ae, server = self.ae, self.server
        assoc.acceptor.maximum_length = ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        assoc.acceptor.supported_contexts = [_copy_context(cx) for cx in server.contexts]
        assoc.requestor.address_info = self.remote
        for event, handlers in server._handlers.items():
            # Intervention events hold one (handler, args); notification events a list of them.
            if event.is_intervention and handlers:
                assoc.bind(event, *cast(tuple[Any, Any], handlers))
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Any, Any]], handlers):
                    assoc.bind(event, handler, args)
        return assoc

