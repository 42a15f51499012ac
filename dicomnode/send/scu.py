"""C-ECHO and C-STORE as a service class user (``dicomnode echo``, ``dicomnode send``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import uid
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

from dicomnode.errors import DeliveryError

log = logging.getLogger(__name__)
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context ids are odd numbers 1 to 255


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    skipped: list[Path] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


def iter_files(paths: Iterable[str | Path]) -> Iterable[Path]:
    """Files given directly, and every file below given folders, in a stable order."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            yield p


def echo(ae_title: str, host: str, port: int, *, calling_aet: str = "DICOMNODE",
         timeout_s: float = 10.0) -> int:
    """C-ECHO a peer; returns the DIMSE status. Raises DeliveryError if no association."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"association with {ae_title}@{host}:{port} not established")
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else -1
    finally:
        assoc.release()


def send_files(files: Iterable[Path], ae_title: str, host: str, port: int, *,
               calling_aet: str = "DICOMNODE", timeout_s: float = 60.0,
               progress: Callable[[Path, int], None] | None = None) -> SendReport:
    """C-STORE DICOM files over one association; non-DICOM files are skipped, not fatal."""
    report = SendReport()
    headers: list[tuple[Path, str, str]] = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            headers.append((path, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            report.skipped.append(path)
    if not headers:
        return report
    contexts: dict[str, set[str]] = {}
    for _, sop_class, ts in headers:
        contexts.setdefault(sop_class, set()).add(ts)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    n = 0
    for sop_class, syntaxes in contexts.items():
        # Offer the file's own syntax, plus uncompressed ones the peer may prefer.
        for ts in sorted(syntaxes | {uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian}):
            if n < _MAX_CONTEXTS:
                ae.add_requested_context(sop_class, ts)
                n += 1
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"association with {ae_title}@{host}:{port} not established "
                            "(rejected or unreachable)")
    try:
        for path, _, _ in headers:
            status = _store_one(assoc, path)
            key = f"0x{status:04X}" if status >= 0 else "none"
            report.statuses[key] = report.statuses.get(key, 0) + 1
            if status in (0x0000, 0xB000, 0xB006, 0xB007):
                report.sent += 1
            else:
                report.failed += 1
            if progress is not None:
                progress(path, status)
            if not assoc.is_established:
                raise DeliveryError(f"association with {ae_title}@{host}:{port} lost after "
                                    f"{report.sent} instances")
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def _store_one(assoc, path: Path) -> int:
    try:
        rsp = assoc.send_c_store(path)
    except ValueError as exc:  # no accepted context for this file's class/syntax
        log.warning("cannot send %s: %s", path.name, exc)
        return -1
    return int(rsp.Status) if rsp is not None and "Status" in rsp else -1


@dataclass(frozen=True)
class ItemOutcome:
    """What happened to one object: ``sent``, ``transient`` (retry later), ``permanent``, or
    ``deferred`` (not tried: the association was lost on an earlier object)."""

    result: str
    detail: str = ""
    status: int | None = None


_SENT = {0x0000, 0xB000, 0xB006, 0xB007}


def classify_status(status: int) -> str:
    """PS3.4 B.2.3: success and warnings are sent; out of resources is worth a retry."""
    if status in _SENT:
        return "sent"
    if 0xA700 <= status <= 0xA7FF or status == 0x0110:  # out of resources, processing failure
        return "transient"
    return "permanent"


def read_output(path: Path, sop_instance_uid: str, sop_class_uid: str) -> Any:
    """Read a result file for sending; ValueError (``cannot read output: ...``) if it is
    missing, damaged or not the object its outbox row names."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a damaged file
        raise ValueError(f"cannot read output: {type(exc).__name__}: {exc}") from exc
    if str(ds.get("SOPInstanceUID", "")) != sop_instance_uid or \
            str(ds.get("SOPClassUID", "")) != sop_class_uid:
        raise ValueError(f"cannot read output: {path.name} does not hold {sop_instance_uid} "
                         "(damaged or replaced)")
    return ds


def store_items(items: list[tuple[str, Path, str]], ae_title: str, host: str, port: int, *,
                calling_aet: str = "DICOMNODE", timeout_s: float = 30.0,
                ssl_context: Any = None) -> dict[str, ItemOutcome]:
    """C-STORE (uid, path, sop_class_uid) items over one association; outcome per uid.

    Connection failures and timeouts are transient; a rejected association and a SOP class the
    peer does not accept are permanent (retrying cannot change them).
    """
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class in sorted({c for _, _, c in items})[:_MAX_CONTEXTS // 2]:
        ae.add_requested_context(sop_class, [uid.ExplicitVRLittleEndian,
                                             uid.ImplicitVRLittleEndian])
    kwargs: dict[str, Any] = {"ae_title": ae_title}
    if ssl_context is not None:
        kwargs["tls_args"] = (ssl_context, host)
    try:
        assoc = ae.associate(host, port, **kwargs)
    except (OSError, RuntimeError) as exc:
        return {u: ItemOutcome("transient", f"association failed: {exc}") for u, _, _ in items}
    if not assoc.is_established:
        if assoc.is_rejected:
            return {u: ItemOutcome("permanent", "association rejected") for u, _, _ in items}
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            # The peer answered but accepts none of our SOP classes (pynetdicom then aborts).
            return {u: ItemOutcome("permanent", f"SOP class {c} not accepted")
                    for u, _, c in items}
        return {u: ItemOutcome("transient", "no association (peer down or unreachable)")
                for u, _, _ in items}
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    out: dict[str, ItemOutcome] = {}
    lost = False  # set on the first object without an answer; the flag, not is_established,
    # decides, because pynetdicom may still report the association up for a moment after it
    try:
        for sop_uid, path, sop_class in items:
            if sop_class not in accepted:
                out[sop_uid] = ItemOutcome("permanent", f"SOP class {sop_class} not accepted")
                continue
            if lost or not assoc.is_established:
                # Lost on an earlier object: this one was not tried and must not pay for it.
                lost = True
                out[sop_uid] = ItemOutcome("deferred", "association lost before this item")
                continue
            try:
                ds = read_output(path, sop_uid, sop_class)
            except ValueError as exc:
                out[sop_uid] = ItemOutcome("permanent", str(exc))
                continue
            try:
                rsp = assoc.send_c_store(ds)
            except Exception as exc:  # noqa: BLE001 - pynetdicom raises many types per dataset
                detail = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, RuntimeError | OSError) or not assoc.is_established:
                    lost = True  # the association failed: worth a retry
                    out[sop_uid] = ItemOutcome("transient", detail)
                else:
                    # The association is fine but this object cannot be sent (no context for
                    # its transfer syntax, elements that cannot be encoded): retrying cannot help.
                    out[sop_uid] = ItemOutcome("permanent", detail)
                continue
            if rsp is None or "Status" not in rsp:
                lost = True
                out[sop_uid] = ItemOutcome("transient", "no response (timeout or abort)")
                continue
            status = int(rsp.Status)
            out[sop_uid] = ItemOutcome(classify_status(status), f"status 0x{status:04X}", status)
    finally:
        if assoc.is_established and lost:
            assoc.abort()
        elif assoc.is_established:
            assoc.release()
    return out
