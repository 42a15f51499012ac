"""Read the few header attributes that assembly and eligibility need (no pixel decoding)."""

from __future__ import annotations

import math
import re
import struct
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomnode.errors import InstanceRejected
from dicomnode.geometry.planes import functional_group
from dicomnode.receive import status
from dicomnode.receive.header import CT_IMAGE_STORAGE, Header

ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
STORED_CLASSES = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE,
                            LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE})

# PS3.5 9.1: digits and dots, no empty components, at most 64 characters. This is also what
# makes a UID safe as a path part (no separators, no "..").
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LENIENT_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Image Type has a handful of values in practice; more is hostile and must not reach the database.
_MAX_IMAGE_TYPE_VALUES = 16
_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_TAG = b"\xfe\xff\x00\xe0"
# How the first fragment of each encapsulated syntax begins (PS3.5 A.4; ISO 10918, 15444, 14495).
_JPEG_SOI = (b"\xff\xd8",)
_J2K_START = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")
_MAGIC = {
    "1.2.840.10008.1.2.4.50": _JPEG_SOI, "1.2.840.10008.1.2.4.51": _JPEG_SOI,
    "1.2.840.10008.1.2.4.57": _JPEG_SOI, "1.2.840.10008.1.2.4.70": _JPEG_SOI,
    "1.2.840.10008.1.2.4.80": _JPEG_SOI, "1.2.840.10008.1.2.4.81": _JPEG_SOI,
    "1.2.840.10008.1.2.4.90": _J2K_START, "1.2.840.10008.1.2.4.91": _J2K_START,
}
_RLE = "1.2.840.10008.1.2.5"


def check_uid(value: object, keyword: str) -> str:
    """Return the UID if it is valid and safe as a path part, else raise InstanceRejected.

    Leading zeros in components are tolerated (real archives contain them); anything but digits
    and single dots is refused.
    """
    text = str(value) if value is not None else ""
    if not text:
        raise InstanceRejected(status.CANNOT_UNDERSTAND, f"{keyword} missing")
    if len(text) > 64 or not _LENIENT_UID_RE.match(text):
        shown = text[:80].encode("unicode_escape").decode("ascii")
        raise InstanceRejected(status.CANNOT_UNDERSTAND, f"invalid {keyword} {shown!r}")
    return text


def _floats(value: Any, n: int) -> list[float] | None:
    """n finite numbers, or None (nan and inf are as unusable as a missing value)."""
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(map(math.isfinite, out)) else None


def _text(ds: Dataset | Header, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    return str(value)


def _number(ds: Dataset | Header, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        number = None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _enhanced_frames(ds: Dataset) -> list[dict[str, Any]]:
    """Per-frame position/orientation of an Enhanced CT (PS3.3 C.7.6.16), None where unusable."""
    frames = []
    for index in range(len(ds.get("PerFrameFunctionalGroupsSequence") or [])):
        pp = functional_group(ds, index, "PlanePositionSequence")
        po = functional_group(ds, index, "PlaneOrientationSequence")
        frames.append({
            "ipp": _floats(pp.get("ImagePositionPatient"), 3) if pp is not None else None,
            "iop": _floats(po.get("ImageOrientationPatient"), 6) if po is not None else None,
        })
    return frames


def _contrast_administered(ds: Dataset | Header) -> str:
    """Enhanced CT: "YES" when any Contrast/Bolus Usage item (PS3.3 C.7.6.16.2.12) says so."""
    if not isinstance(ds, Dataset) or (  # a Header declines functional groups
            "PerFrameFunctionalGroupsSequence" not in ds
            and "SharedFunctionalGroupsSequence" not in ds):
        return ""
    item = functional_group(ds, 0, "ContrastBolusUsageSequence")
    if item is None:
        return ""
    return "YES" if str(item.get("ContrastBolusAgentAdministered", "")).upper() == "YES" else "NO"


def read_header(ds: Dataset | Header) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (series attributes, instance geometry) from a dataset (or its plain header).

    Raises
    ------
    InstanceRejected
        When an attribute every CT image must have is missing or unusable.
    """
    values = ds.get("ImageType") or []
    if isinstance(values, str | bytes):  # one value: not a list of its characters
        values = [values]
    image_type = [str(v).upper() for v in values][:_MAX_IMAGE_TYPE_VALUES]
    spacing = _floats(ds.get("PixelSpacing"), 2)
    series = {
        "modality": _text(ds, "Modality"),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "image_type": image_type,
        "body_part": _text(ds, "BodyPartExamined").upper(),
        "series_description": _text(ds, "SeriesDescription"),
        "study_description": _text(ds, "StudyDescription"),
        "protocol_name": _text(ds, "ProtocolName"),
        "kernel": _text(ds, "ConvolutionKernel"),
        "slice_thickness_mm": _number(ds, "SliceThickness"),
        "rows": int(ds.get("Rows") or 0),
        "columns": int(ds.get("Columns") or 0),
        "pixel_spacing_mm": spacing,
        "series_number": _number(ds, "SeriesNumber"),
        "manufacturer": _text(ds, "Manufacturer"),
        "specific_character_set": _text(ds, "SpecificCharacterSet"),
        # Contrast/Bolus module (PS3.3 C.7.6.4): eligibility refuses contrast studies.
        "contrast_agent": _text(ds, "ContrastBolusAgent"),
        "contrast_route": _text(ds, "ContrastBolusRoute"),
        "contrast_volume_ml": _number(ds, "ContrastBolusVolume"),
        "contrast_ingredient": _text(ds, "ContrastBolusIngredient"),
        "contrast_administered": _contrast_administered(ds),
        # Follow-up matching (dicomnode.compare): who, and when (acquisition, series, study).
        "patient_id": _text(ds, "PatientID")[:64],
        "issuer_of_patient_id": _text(ds, "IssuerOfPatientID")[:64],
        "patient_birth_date": _text(ds, "PatientBirthDate")[:8],
        "patient_sex": _text(ds, "PatientSex")[:16],
        **{key: _text(ds, keyword)[:26] for key, keyword in (
            ("acquisition_datetime", "AcquisitionDateTime"), ("acquisition_date", "AcquisitionDate"),
            ("acquisition_time", "AcquisitionTime"), ("series_date", "SeriesDate"),
            ("series_time", "SeriesTime"), ("study_date", "StudyDate"),
            ("study_time", "StudyTime"))},
    }
    geometry: dict[str, Any] = {
        "ipp": _floats(ds.get("ImagePositionPatient"), 3),
        "iop": _floats(ds.get("ImageOrientationPatient"), 6),
        "instance_number": _number(ds, "InstanceNumber"),
        "acquisition_number": _number(ds, "AcquisitionNumber"),
        "images_in_acquisition": _number(ds, "ImagesInAcquisition"),
        "number_of_frames": int(_number(ds, "NumberOfFrames") or 1),
        "image_type": image_type,
        # Per instance, so that two reconstructions sharing one Series Instance UID show.
        "matrix": [series["rows"], series["columns"]],
        "pixel_spacing_mm": spacing,
    }
    if series["sop_class_uid"] != CT_IMAGE_STORAGE and isinstance(ds, Dataset):
        geometry["frames"] = _enhanced_frames(ds)  # a Header is always CT Image Storage
    return series, geometry


def check_encoding(ds: Dataset, transfer_syntax: str) -> None:
    """Refuse a data set that is truncated or not encoded as the transfer syntax says.

    Only the top-level elements as read are inspected (no value is converted): a defined-length
    value shorter than its length field means the stream ended early, and an element read with
    another VR encoding means the sender lied about the transfer syntax (pydicom would guess).
    """
    implicit = UID(transfer_syntax).is_implicit_VR
    for elem in ds.elements():
        if not isinstance(elem, RawDataElement):
            continue
        if elem.is_implicit_VR != implicit:
            found = "Implicit" if elem.is_implicit_VR else "Explicit"
            raise InstanceRejected(status.CANNOT_UNDERSTAND,
                                   f"data set is encoded {found} VR, transfer syntax "
                                   f"{transfer_syntax} says otherwise")
        if (elem.length != _UNDEFINED_LENGTH and isinstance(elem.value, bytes)
                and len(elem.value) < elem.length):
            raise InstanceRejected(status.CANNOT_UNDERSTAND,
                                   f"data set truncated: element {elem.tag} has "
                                   f"{len(elem.value)} of {elem.length} bytes")


def _int(ds: Dataset | Header, keyword: str) -> int | None:
    value = ds.get(keyword)
    return value if isinstance(value, int) else None


def check_image(ds: Dataset | Header, transfer_syntax: str) -> None:
    """Refuse CT instances that can never be loaded, or whose pixel module contradicts itself.

    PS3.3 C.7.6.3 (Image Pixel) and C.8.2.1 (CT Image): one sample, MONOCHROME1/2, Bits Stored
    within Bits Allocated; the Pixel Data length must match the header (PS3.5 8.1.1) and an
    encapsulated syntax must carry fragments that begin like its codestream (PS3.5 A.4).
    No pixel is decoded here.
    """
    def refuse(reason: str) -> InstanceRejected:
        return InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, reason)

    for keyword in ("Rows", "Columns", "BitsAllocated"):
        value = ds.get(keyword)
        if not isinstance(value, int) or value <= 0:
            raise refuse(f"{keyword} missing or invalid ({value!r})")
    bits = ds.get("BitsAllocated")
    if bits not in (8, 16, 32):
        raise refuse(f"BitsAllocated {bits} not valid for CT")
    stored = _int(ds, "BitsStored")
    if stored is not None and not 1 <= stored <= bits:
        raise refuse(f"BitsStored {stored} not within BitsAllocated {bits}")
    samples = _int(ds, "SamplesPerPixel") or 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise refuse(f"SamplesPerPixel {samples}, {photometric}: CT is one greyscale sample")
    if _int(ds, "PixelRepresentation") not in (None, 0, 1):
        raise refuse(f"PixelRepresentation {ds.get('PixelRepresentation')} is neither 0 nor 1")
    if "PixelData" not in ds:
        raise refuse("no Pixel Data")
    # A Header reads only native Pixel Data of defined length; anything else is a Dataset.
    encapsulated = isinstance(ds, Dataset) and ds["PixelData"].is_undefined_length
    if UID(transfer_syntax).is_compressed:
        if not encapsulated:
            raise refuse(f"Pixel Data not encapsulated, but transfer syntax {transfer_syntax} "
                         "is compressed")
        if isinstance(ds, Dataset):
            _check_first_fragment(ds.PixelData, transfer_syntax)
        return
    if encapsulated:
        raise refuse("encapsulated Pixel Data in a native transfer syntax")
    frames = int(_number(ds, "NumberOfFrames") or 1)
    row_bytes = ds.get("Columns") * samples * (bits // 8)
    expected = ds.get("Rows") * row_bytes * frames
    actual = ds.pixel_length if isinstance(ds, Header) else len(ds.PixelData)
    # A byte of padding to even length is normal; a whole row more means the header lies.
    if actual < expected or actual - expected >= row_bytes:
        raise refuse(f"Pixel Data has {actual} bytes, {expected} expected from Rows, Columns, "
                     "Number of Frames and Bits Allocated")


def _check_first_fragment(data: bytes, transfer_syntax: str) -> None:
    """The first fragment after the Basic Offset Table begins like the syntax's codestream."""
    head = b""
    if len(data) >= 8 and data[:4] == _ITEM_TAG:
        (offset_table,) = struct.unpack("<I", data[4:8])
        item = 8 + offset_table
        if data[item:item + 4] == _ITEM_TAG:
            head = data[item + 8:item + 16]
    reason = ""
    if not head:
        reason = "encapsulated Pixel Data has no fragment"
    elif transfer_syntax == _RLE:
        segments = struct.unpack("<I", head[:4])[0] if len(head) >= 8 else 0
        offset = struct.unpack("<I", head[4:8])[0] if len(head) >= 8 else 0
        if not 1 <= segments <= 15 or offset != 64:
            reason = "first fragment is not an RLE header"
    elif transfer_syntax in _MAGIC and not head.startswith(_MAGIC[transfer_syntax]):
        name = "JPEG 2000" if _MAGIC[transfer_syntax] is _J2K_START else "JPEG"
        reason = f"first fragment is not a {name} codestream"
    if reason:
        raise InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, reason)
