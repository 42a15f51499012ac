"""Per-frame header facts of stored CT instances (single-frame and Enhanced/Legacy Converted).

Inputs: paths of stored instances. Outputs: :class:`Frame` records (one per image plane) and a
header summary. Side effects: reads the files (pixel data is deferred, not read here).

Where the values come from:

* CT Image Storage (PS3.3 A.3): Image Position/Orientation (Patient) (C.7.6.2), Pixel Spacing
  (C.7.6.2), Rescale Slope/Intercept (C.11.1 Modality LUT / C.8.2.1 CT Image).
* Enhanced CT / Legacy Converted Enhanced CT (PS3.3 A.38, A.70): the Plane Position, Plane
  Orientation, Pixel Measures and Pixel Value Transformation functional groups (C.7.6.16.2),
  looked up per frame first, then in the shared groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.errors import VolumeError
from dicomnode.geometry.planes import functional_group

# Elements larger than this are read only when used (in practice: Pixel Data).
DEFER_SIZE = "64 KB"


@dataclass(frozen=True, eq=False)
class Frame:
    """One source image plane: where it is, its matrix and its rescale."""

    path: Path
    index: int | None  # 0-based frame index in a multi-frame instance, None for single-frame
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str | None
    position: np.ndarray  # Image Position (Patient), LPS mm, shape (3,)
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    rows: int
    columns: int
    slope: float
    intercept: float
    rescale_missing: bool

    @property
    def key(self) -> tuple[str, int]:
        """Identity of the plane: SOP Instance UID and frame."""
        return self.sop_instance_uid, -1 if self.index is None else self.index


def read_instance(path: Path) -> tuple[Dataset, list[Frame]]:
    """Read one stored instance (pixel data deferred) and describe its frames.

    Raises
    ------
    VolumeError
        Not DICOM, not CT, no pixel data, more than one sample per pixel, or geometry missing.
    """
    name = Path(path).name
    try:
        ds = pydicom.dcmread(path, defer_size=DEFER_SIZE)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise VolumeError(f"cannot read {name}: {exc}") from exc
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        raise VolumeError(f"{name} is not CT (Modality {modality or 'missing'})")
    if "PixelData" not in ds:
        raise VolumeError(f"{name} has no pixel data")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeError(f"{name} has {ds.SamplesPerPixel} samples per pixel (CT is greyscale)")
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if ds.get(keyword) in (None, ""):
            raise VolumeError(f"{name} lacks {keyword}")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        frames = [_multi_frame(ds, path, i) for i in range(n_frames)]
    elif n_frames == 1:
        frames = [_single_frame(ds, path)]
    else:
        raise VolumeError(f"{name} has {n_frames} frames but no functional groups")
    return ds, frames


def _floats(value: Any, n: int, what: str, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{name}: {what} is not numeric ({value!r})") from exc
    if len(out) != n or not all(np.isfinite(out)):
        raise VolumeError(f"{name}: {what} must have {n} finite values, got {value!r}")
    return out


def _rescale(item: Dataset | None) -> tuple[float, float] | None:
    if item is None or item.get("RescaleSlope") in (None, "") or item.get("RescaleIntercept") in (None, ""):
        return None
    return float(item.RescaleSlope), float(item.RescaleIntercept)


def _common(ds: Dataset, path: Path, index: int | None, *, position: tuple[float, ...],
            orientation: tuple[float, ...], spacing: tuple[float, ...],
            rescale: tuple[float, float] | None) -> Frame:
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(intercept):
        raise VolumeError(f"{Path(path).name}: invalid rescale slope/intercept {slope}/{intercept}")
    if min(spacing) <= 0:
        raise VolumeError(f"{Path(path).name}: pixel spacing must be positive, got {spacing}")
    for_uid = ds.get("FrameOfReferenceUID")
    return Frame(
        path=Path(path),
        index=index,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(for_uid) if for_uid else None,
        position=np.asarray(position, dtype=np.float64),
        orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing_mm=spacing,  # type: ignore[arg-type]
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=slope,
        intercept=intercept,
        rescale_missing=rescale is None,
    )


def _single_frame(ds: Dataset, path: Path) -> Frame:
    name = Path(path).name
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if ds.get(keyword) in (None, ""):
            raise VolumeError(f"{name} lacks {keyword}")
    return _common(
        ds, path, None,
        position=_floats(ds.ImagePositionPatient, 3, "Image Position (Patient)", name),
        orientation=_floats(ds.ImageOrientationPatient, 6, "Image Orientation (Patient)", name),
        spacing=_floats(ds.PixelSpacing, 2, "Pixel Spacing", name),
        rescale=_rescale(ds),
    )


def _multi_frame(ds: Dataset, path: Path, index: int) -> Frame:
    name = f"{Path(path).name} frame {index + 1}"
    pos = functional_group(ds, index, "PlanePositionSequence")
    ori = functional_group(ds, index, "PlaneOrientationSequence")
    measures = functional_group(ds, index, "PixelMeasuresSequence")
    if pos is None or pos.get("ImagePositionPatient") is None:
        raise VolumeError(f"{name} lacks Plane Position (Patient)")
    if ori is None or ori.get("ImageOrientationPatient") is None:
        raise VolumeError(f"{name} lacks Plane Orientation (Patient)")
    if measures is None or measures.get("PixelSpacing") is None:
        raise VolumeError(f"{name} lacks Pixel Measures (Pixel Spacing)")
    return _common(
        ds, path, index,
        position=_floats(pos.ImagePositionPatient, 3, "Image Position (Patient)", name),
        orientation=_floats(ori.ImageOrientationPatient, 6, "Image Orientation (Patient)", name),
        spacing=_floats(measures.PixelSpacing, 2, "Pixel Spacing", name),
        rescale=_rescale(functional_group(ds, index, "PixelValueTransformationSequence")) or _rescale(ds),
    )


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)  # AS (PS3.5 6.2)
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def _find(ds: Dataset, keyword: str) -> Any:
    """A value at the top level, else in the shared or first per-frame groups (one level deep)."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        for macro in seq[0]:
            if macro.VR != "SQ" or not macro.value:
                continue
            value = macro.value[0].get(keyword)
            if value not in (None, ""):
                return value
    return None


def header_summary(ds: Dataset) -> dict[str, Any]:
    """Study facts downstream stages use (PS3.3 C.7.1.1, C.7.2.2, C.8.2.1); no names or IDs."""
    age = _AGE.match(str(ds.get("PatientAge", "") or ""))
    kernel = _find(ds, "ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = "\\".join(str(k) for k in kernel)
    thickness = _find(ds, "SliceThickness")
    try:
        thickness_mm = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness_mm = None
    return {
        # whole years; an infant's age in days, weeks or months is 0
        "patient_age_y": (int(int(age.group(1)) * _DAYS_PER[age.group(2).upper()] // 365.25)
                          if age else None),
        "patient_sex": str(ds.get("PatientSex", "") or "") or None,
        "accession_number": str(ds.get("AccessionNumber", "") or "") or None,
        "study_date": str(ds.get("StudyDate", "") or "") or None,
        "manufacturer": str(ds.get("Manufacturer", "") or "") or None,
        "kernel": str(kernel) if kernel else None,
        "slice_thickness_mm": thickness_mm,
    }
