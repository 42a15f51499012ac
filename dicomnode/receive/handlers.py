"""Thin pynetdicom event handlers: store durably, record, return a named status."""

from __future__ import annotations

import ipaddress
import logging
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.events import Event

from dicomnode.config import AccessSettings
from dicomnode.db.models import AssociationEvent
from dicomnode.db.session import SessionFactory
from dicomnode.errors import InstanceRejected
from dicomnode.logs import log_context
from dicomnode.receive import status
from dicomnode.receive.header import Header, read_plain_header
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.receive.wire import file_meta_bytes

log = logging.getLogger(__name__)


def _peer(event: Event) -> tuple[str, str]:
    req = event.assoc.requestor
    return str(req.ae_title or "").strip(), f"{req.address}:{req.port}"


def _file_parts(event: Event, request: C_STORE) -> tuple[bytes, memoryview]:
    """The DICOM file as received: preamble and meta, then the data set buffer (not copied)."""
    head = file_meta_bytes(str(request.AffectedSOPClassUID or ""),
                           str(request.AffectedSOPInstanceUID or ""),
                           str(event.context.transfer_syntax))
    return head, request.DataSet.getbuffer()  # type: ignore[union-attr]


def _decode(request: C_STORE, transfer_syntax: UID) -> Dataset | Header:
    """The plain header of the received data set, or the data set decoded by pydicom.

    Decoded straight from its buffer: ``event.dataset`` would first copy it (``getvalue()``)
    only to see if it is empty.
    """
    if request.DataSet is None:
        return Dataset()
    header = read_plain_header(request.DataSet.getbuffer(), str(transfer_syntax))
    if header is not None:
        return header
    return decode(request.DataSet, transfer_syntax.is_implicit_VR,
                  transfer_syntax.is_little_endian, transfer_syntax.is_deflated)


def handle_echo(event: Event) -> int:
    """C-ECHO: always success once the association is accepted."""
    return status.SUCCESS


def handle_store(event: Event, store: InstanceStore) -> int:
    """C-STORE: acknowledge only once the instance is on disk and in the database."""
    calling_ae, peer = _peer(event)
    request = cast(C_STORE, event.request)  # this handler is bound to EVT_C_STORE only
    sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
    try:
        series_uid = ""

        def decoded() -> Dataset | Header:
            nonlocal series_uid
            ds = _decode(request, event.context.transfer_syntax)
            series_uid = str(ds.get("SeriesInstanceUID", ""))[:64]
            return ds

        outcome = store.store(_file_parts(event, request), decoded,
                              sop_class_uid=str(request.AffectedSOPClassUID),
                              sop_instance_uid=sop_instance_uid,
                              transfer_syntax=str(event.context.transfer_syntax))
        with log_context(series_uid=series_uid):
            log.debug("C-STORE %s from %s: %s", sop_instance_uid, calling_ae, outcome.action)
        return status.SUCCESS
    except InstanceRejected as exc:
        log.warning("C-STORE refused (0x%04X) from %s@%s: %s", exc.status, calling_ae, peer,
                    exc.reason)
        store.record_error(status_code=exc.status, reason=exc.reason, calling_ae=calling_ae,
                           peer=peer, sop_instance_uid=sop_instance_uid)
        return exc.status
    except Exception as exc:  # noqa: BLE001 - the node keeps serving; the cause is recorded
        log.exception("C-STORE failed unexpectedly from %s@%s", calling_ae, peer)
        store.record_error(status_code=status.PROCESSING_FAILURE,
                           reason=f"{type(exc).__name__}: {exc}", calling_ae=calling_ae,
                           peer=peer, sop_instance_uid=sop_instance_uid)
        return status.PROCESSING_FAILURE


def _malformed(primitive: object) -> str:
    """Why an A-ASSOCIATE-RQ lacks what PS3.8 9.3.2 requires, or "" when it is complete."""
    if getattr(primitive, "maximum_length_received", None) is None:
        return "association request without User Information (maximum length)"
    if getattr(primitive, "implementation_class_uid", None) is None:
        return "association request without Implementation Class UID"
    if not getattr(primitive, "presentation_context_definition_list", None):
        return "association request without presentation contexts"
    return ""


def handle_requested(event: Event, access: AccessSettings, sessions: SessionFactory) -> None:
    """A-ASSOCIATE-RQ: refuse peers outside the allowed IP networks (pynetdicom has no IP list),
    and requests lacking mandatory items (pynetdicom would accept them).

    Calling and called AE titles are checked by pynetdicom itself (``require_calling_aet``,
    ``require_called_aet``); this adds the network check and records every refusal.
    """
    req = event.assoc.requestor
    primitive = req.primitive
    calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
    called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    address = str(req.address)
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        allowed = any(ip in ipaddress.ip_network(n) for n in access.allowed_networks)
    except ValueError:
        allowed = False
    reason = "" if allowed else "peer address not in allowed networks"
    reason = reason or _malformed(primitive)
    if not reason:
        return
    log.warning("association from %s (calling %s) rejected: %s", address, calling, reason)
    record_association(sessions, calling, called, address, "rejected", reason)
    event.assoc.acse.send_reject(status.RJ_PERMANENT, status.RJ_SOURCE_SERVICE_USER,
                                 status.RJ_NO_REASON)
    # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ has been sent
    # before the socket is closed, or the peer sees an abort instead of the reason.
    event.assoc.kill()


def handle_accepted(event: Event, store: InstanceStore) -> None:
    """Count the association (in the recorder's next transaction: no wait here)."""
    store.recorder.count_association("accepted")


def handle_rejected(event: Event, sessions: SessionFactory) -> None:
    """Record associations pynetdicom rejected (unknown calling AE, wrong called AE, limits)."""
    req = event.assoc.requestor
    primitive = req.primitive
    calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
    called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    log.warning("association from %s (calling %s, called %s) rejected", req.address, calling,
                called)
    record_association(sessions, calling, called, str(req.address), "rejected",
                       "AE title not recognised or association limit reached")


def record_association(sessions: SessionFactory, calling: str, called: str, address: str,
                       outcome: str, reason: str) -> None:
    try:
        with sessions.begin() as session:
            session.add(AssociationEvent(calling_ae_title=calling[:16], called_ae_title=called[:16],
                                         peer_address=address[:64], outcome=outcome,
                                         reason=reason))
    except Exception:  # noqa: BLE001 - recording must never break the rejection itself
        log.exception("could not record association event")


def bindings(store: InstanceStore, access: AccessSettings,
             sessions: SessionFactory) -> list[tuple]:
    """Event handlers bound to their dependencies, for ``AE.start_server(evt_handlers=...)``."""
    return [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [store]),
        (evt.EVT_REQUESTED, handle_requested, [access, sessions]),
        (evt.EVT_REJECTED, handle_rejected, [sessions]),
        (evt.EVT_ACCEPTED, handle_accepted, [store]),
    ]
