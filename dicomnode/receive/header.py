"""Read the few header attributes that assembly and eligibility need (no pixel decoding)."""

from __future__ import annotations

import re
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomnode.errors import InstanceRejected
from dicomnode.receive import status

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
STORED_CLASSES = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE,
                            LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE})

# PS3.5 9.1: digits and dots, no empty components, at most 64 characters. This is also what
# makes a UID safe as a path part (no separators, no "..").
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LENIENT_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: object, keyword: str) -> str:
    """Return the UID if it is valid and safe as a path part, else raise InstanceRejected.

    Leading zeros in components are tolerated (real archives contain them); anything but digits
    and single dots is refused.
    """
    text = str(value) if value is not None else ""
    if not text or len(text) > 64 or not _LENIENT_UID_RE.match(text):
        shown = text[:80].encode("unicode_escape").decode("ascii")
        raise InstanceRejected(status.CANNOT_UNDERSTAND, f"invalid {keyword} {shown!r}")
    return text


def _floats(value: Any, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(value, str):
        return "\\".join(str(v) for v in value)
    return str(value)


def _number(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _enhanced_frames(ds: Dataset) -> list[dict[str, Any]]:
    """Per-frame position/orientation of an Enhanced CT (PS3.3 C.7.6.16)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_iop = None
    if shared:
        po = shared[0].get("PlaneOrientationSequence")
        if po:
            shared_iop = _floats(po[0].get("ImageOrientationPatient"), 6)
    frames = []
    for item in ds.get("PerFrameFunctionalGroupsSequence") or []:
        pp = item.get("PlanePositionSequence")
        po = item.get("PlaneOrientationSequence")
        frames.append({
            "ipp": _floats(pp[0].get("ImagePositionPatient"), 3) if pp else None,
            "iop": (_floats(po[0].get("ImageOrientationPatient"), 6) if po else shared_iop),
        })
    return frames


def read_header(ds: Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (series attributes, instance geometry) from a dataset.

    Raises
    ------
    InstanceRejected
        When an attribute every CT image must have is missing or unusable.
    """
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
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
    }
    geometry = {
        "ipp": _floats(ds.get("ImagePositionPatient"), 3),
        "iop": _floats(ds.get("ImageOrientationPatient"), 6),
        "instance_number": _number(ds, "InstanceNumber"),
        "acquisition_number": _number(ds, "AcquisitionNumber"),
        "images_in_acquisition": _number(ds, "ImagesInAcquisition"),
        "number_of_frames": int(_number(ds, "NumberOfFrames") or 1),
        "image_type": image_type,
    }
    if series["sop_class_uid"] != CT_IMAGE_STORAGE:
        geometry["frames"] = _enhanced_frames(ds)
    return series, geometry


def check_image(ds: Dataset, transfer_syntax: str) -> None:
    """Refuse CT instances that can never be loaded (missing or short pixel data)."""
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        value = ds.get(keyword)
        if not isinstance(value, int) or value <= 0:
            raise InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                   f"{keyword} missing or invalid ({value!r})")
    if ds.BitsAllocated not in (8, 16, 32):
        raise InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               f"BitsAllocated {ds.BitsAllocated} not valid for CT")
    if "PixelData" not in ds:
        raise InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "no Pixel Data")
    if not UID(transfer_syntax).is_compressed:
        frames = int(_number(ds, "NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        expected = ds.Rows * ds.Columns * frames * samples * (ds.BitsAllocated // 8)
        actual = len(ds.PixelData)
        if actual < expected:
            raise InstanceRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                   f"Pixel Data has {actual} bytes, {expected} expected")
