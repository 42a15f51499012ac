"""A one-pass reader of the few header values a received CT image is checked and recorded by.

pydicom turns the elements we read into Python objects one by one (keyword lookup, raw
conversion, validation): about 0.6 ms of CPU per image under the GIL, as much as the rest of our
handler (docs/benchmarks.md, "Ingest"). This reader walks the top-level elements of the encoded
data set once and converts only the ~30 values that ``checks`` and ``instance_store`` use, giving
them the types pydicom gives them.

It reads only the plain case: CT Image Storage in Implicit or Explicit VR Little Endian, every
element complete, sequences of defined length, the values it converts in printable ASCII and of
the expected VR. For anything else it returns None and the caller decodes with pydicom, so every
unusual input is still judged by the reference path. The tests compare both readers value for
value on real and generated data sets, and on mutated ones.
"""

from __future__ import annotations

import re
import struct
from typing import Any

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_PIXEL_DATA = 0x7FE00010
# Shared and Per-frame Functional Groups: checks reads contrast use from them, so pydicom decodes.
_FUNCTIONAL_GROUPS = frozenset({0x52009229, 0x52009230})
_UNDEFINED = 0xFFFFFFFF
_HEADER = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")
# Explicit VRs with a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*\x00?")

# The values read, by tag: keyword and VR (as pydicom's dictionary has them).
_WANTED: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"), 0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"), 0x00080018: ("SOPInstanceUID", "UI"),
    0x00080050: ("AccessionNumber", "SH"), 0x00080060: ("Modality", "CS"),
    0x00080070: ("Manufacturer", "LO"), 0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"), 0x00100020: ("PatientID", "LO"),
    0x00180015: ("BodyPartExamined", "CS"), 0x00180050: ("SliceThickness", "DS"),
    0x00181030: ("ProtocolName", "LO"), 0x00181210: ("ConvolutionKernel", "SH"),
    0x0020000D: ("StudyInstanceUID", "UI"), 0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"), 0x00200012: ("AcquisitionNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"), 0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"), 0x00201002: ("ImagesInAcquisition", "IS"),
    0x00280002: ("SamplesPerPixel", "US"), 0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"), 0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"), 0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"), 0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    # Contrast/Bolus (eligibility) and the follow-up match: who and when.
    0x00180010: ("ContrastBolusAgent", "LO"), 0x00181040: ("ContrastBolusRoute", "LO"),
    0x00181041: ("ContrastBolusVolume", "DS"), 0x00181048: ("ContrastBolusIngredient", "CS"),
    0x00100021: ("IssuerOfPatientID", "LO"), 0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"), 0x0008002A: ("AcquisitionDateTime", "DT"),
    0x00080022: ("AcquisitionDate", "DA"), 0x00080032: ("AcquisitionTime", "TM"),
    0x00080021: ("SeriesDate", "DA"), 0x00080031: ("SeriesTime", "TM"),
    0x00080020: ("StudyDate", "DA"), 0x00080030: ("StudyTime", "TM"),
}


class _Declined(Exception):
    """Not the plain case: decode with pydicom instead."""


class Header:
    """The converted values of one data set; ``get`` as on a pydicom ``Dataset``."""

    def __init__(self, values: dict[str, Any], pixel_length: int | None) -> None:
        self._values = values
        #: Length in bytes of a native (defined-length) Pixel Data, None when absent.
        self.pixel_length = pixel_length

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._values or (key == "PixelData" and self.pixel_length is not None)


def read_plain_header(buffer: memoryview, transfer_syntax: str) -> Header | None:
    """The header values of a plain CT image, or None when pydicom must decode it."""
    if transfer_syntax not in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN):
        return None
    try:
        header = _read(buffer, transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN)
    except (_Declined, struct.error, UnicodeDecodeError):
        return None
    if header.get("SOPClassUID") != CT_IMAGE_STORAGE:
        return None
    return header


def _read(buffer: memoryview, implicit: bool) -> Header:
    values: dict[str, Any] = {}
    pixel_length = None
    end = len(buffer)
    offset = 0
    if end >= 6 and implicit and all(0x40 < b < 0x5B for b in buffer[4:6]):
        raise _Declined  # looks explicit: pydicom switches, and check_encoding refuses
    while offset < end:
        if end - offset < 8:
            raise _Declined  # bytes left over that pydicom would ignore
        if implicit:
            group, element, length = _HEADER.unpack_from(buffer, offset)
            vr = b""
            offset += 8
        else:
            group, element, vr, length = _EXPLICIT.unpack_from(buffer, offset)
            offset += 8
            if vr in _LONG_VRS:
                if end - offset < 4:
                    raise _Declined
                (length,) = struct.unpack_from("<I", buffer, offset)
                offset += 4
            elif vr not in _SHORT_VRS:
                raise _Declined  # not a valid VR: pydicom's guessing, then a refusal
        tag = group << 16 | element
        if length == _UNDEFINED or group in (0x0000, 0x0002, 0xFFFE) or offset + length > end:
            raise _Declined  # undefined length, misplaced groups, or cut short
        if tag in _FUNCTIONAL_GROUPS:
            raise _Declined
        if tag == _PIXEL_DATA:
            if vr not in (b"", b"OW", b"OB"):
                raise _Declined
            pixel_length = length
        elif tag in _WANTED:
            keyword, expected = _WANTED[tag]
            if vr and vr.decode("ascii") != expected:
                raise _Declined
            # None as pydicom has it for an empty number: present, but without a value.
            values[keyword] = _convert(bytes(buffer[offset:offset + length]), expected)
        offset += length
    return Header(values, pixel_length)


def _convert(raw: bytes, vr: str) -> Any:
    """The value pydicom gives for ``raw`` read as ``vr`` (None for an empty number)."""
    if vr == "US":
        if len(raw) % 2:
            raise _Declined
        numbers = [v for (v,) in struct.iter_unpack("<H", raw)]
        return numbers[0] if len(numbers) == 1 else (numbers or None)
    if not raw:
        return None if vr in ("DS", "IS") else ""
    if _PRINTABLE.fullmatch(raw) is None:
        raise _Declined  # other characters: pydicom's character set handling decides
    text = raw.decode("ascii")
    if vr == "UI":  # pydicom: strip trailing NULs and spaces, then split
        return _single(text.rstrip("\0 ").split("\\"))
    if vr in ("LO", "SH"):  # text VRs: each value stripped of trailing NULs and spaces
        return _single([v.rstrip("\0 ") for v in text.split("\\")])
    if vr in ("CS", "DA", "DT", "TM"):  # the whole value stripped, then split (pydicom's
        # convert_string; dates and times stay text while datetime_conversion is off)
        return _single(text.rstrip(" \0").split("\\"))
    items = text.strip().split("\\")
    if vr == "DS" and all(_DECIMAL.fullmatch(v.strip()) for v in items):
        return _single([float(v) for v in items])
    if vr == "IS" and all(_INTEGER.fullmatch(v.strip()) for v in items):
        return _single([int(v) for v in items])
    raise _Declined


def _single(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items
