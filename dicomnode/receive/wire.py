"""Byte-level encoders for the two fixed-layout structures written once per received instance.

pydicom builds a ``Dataset`` (with per-element validation) to encode each of them, which cost
about as much CPU per image as all of our header checks together (docs/benchmarks.md, "Ingest").
Both layouts are fixed by the standard, and the tests compare these encoders byte for byte
with pydicom's and pynetdicom's output.

* File Meta Information, PS3.10 7.1: group 0002 in Explicit VR Little Endian.
* The C-STORE-RSP command set, PS3.7 9.3.1.2 and E.1: group 0000 in Implicit VR Little Endian.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101


def _even(value: str, pad: bytes) -> bytes:
    """ASCII value padded to even length (UI pads with NUL, other strings with a space)."""
    raw = value.encode("ascii", "replace")  # a bad UID is refused later, by check_uid
    return raw + pad if len(raw) % 2 else raw


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element; OB has the 4-byte length form (PS3.5 7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _implicit(element: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element of the command group (0000,eeee)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information of a received instance.

    The same bytes as pynetdicom's ``encode_file_meta(event.file_meta)`` after the preamble:
    pynetdicom's Implementation Class UID and Version Name.
    """
    body = b"".join((
        _explicit(0x0002, 0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, 0x0002, b"UI", _even(sop_class_uid, b"\x00")),
        _explicit(0x0002, 0x0003, b"UI", _even(sop_instance_uid, b"\x00")),
        _explicit(0x0002, 0x0010, b"UI", _even(transfer_syntax, b"\x00")),
        _explicit(0x0002, 0x0012, b"UI", _even(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _explicit(0x0002, 0x0013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    group_length = _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def store_response_bytes(*, message_id: int, sop_class_uid: str, sop_instance_uid: str,
                         status: int) -> bytes:
    """The command set of a C-STORE-RSP without a data set, Offending Element or Error Comment.

    Elements in tag order, as pynetdicom encodes them: Command Group Length, Affected SOP Class
    UID, Command Field, Message ID Being Responded To, Command Data Set Type, Status, Affected
    SOP Instance UID.
    """
    body = b"".join((
        _implicit(0x0002, _even(sop_class_uid, b"\x00")),
        _implicit(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _implicit(0x0120, struct.pack("<H", message_id)),
        _implicit(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _implicit(0x0900, struct.pack("<H", status)),
        _implicit(0x1000, _even(sop_instance_uid, b"\x00")),
    ))
    return _implicit(0x0000, struct.pack("<I", len(body))) + body
