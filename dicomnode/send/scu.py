"""C-ECHO and C-STORE as a service class user (``dicomnode echo``, ``dicomnode send``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import uid
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification

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


def _store_one(assoc, path: Path) -> int:  # type: ignore[no-untyped-def]
    try:
        rsp = assoc.send_c_store(path)
    except ValueError as exc:  # no accepted context for this file's class/syntax
        log.warning("cannot send %s: %s", path.name, exc)
        return -1
    return int(rsp.Status) if rsp is not None and "Status" in rsp else -1
