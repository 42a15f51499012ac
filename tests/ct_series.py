"""The one helper that writes small CT test series with pydicom.

``ct_slice`` / ``stack`` build CT Image Storage instances from scratch (geometry and HU values
chosen by the test); ``make_series`` copies a real CT slice (the ``ct_template`` fixture of
tests/conftest.py) into a series; ``write`` and ``write_series`` save them. Larger phantoms with
known haemorrhage come from ``dicomnode.lab.synth``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

Values = Callable[[np.ndarray], np.ndarray]  # physical points (..., 3) -> HU


def ds_str(v: float) -> str:
    """A Decimal String value (16 characters at most)."""
    s = f"{v:.8g}"
    return s if len(s) <= 16 else f"{v:.6g}"


def ct_slice(
    position: Sequence[float],
    *,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    rows: int = 12,
    columns: int = 16,
    spacing: Sequence[float] = (0.8, 0.7),
    hu: np.ndarray | None = None,
    slope: float | None = 1.0,
    intercept: float | None = -1024.0,
    series_uid: str = "1.2.3.4",
    study_uid: str = "1.2.3",
    frame_uid: str = "1.2.3.5",
    thickness_mm: float = 5.0,
    instance_number: int = 1,
) -> Dataset:
    """One CT Image Storage instance; ``hu`` (rows, columns) defaults to zeros."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "TEST^LOAD"
    ds.PatientID = "LOAD-1"
    ds.PatientAge = "067Y"
    ds.PatientSex = "F"
    ds.AccessionNumber = "ACC1"
    ds.StudyDate = "20240102"
    ds.Manufacturer = "TESTCO"
    ds.ConvolutionKernel = "H30s"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.InstanceNumber = instance_number
    ds.SliceThickness = ds_str(thickness_mm)
    ds.ImagePositionPatient = [ds_str(v) for v in position]
    ds.ImageOrientationPatient = [ds_str(v) for v in orientation]
    ds.PixelSpacing = [ds_str(v) for v in spacing]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if slope is not None:
        ds.RescaleSlope = ds_str(slope)
    if intercept is not None:
        ds.RescaleIntercept = ds_str(intercept)
    hu = np.zeros((rows, columns)) if hu is None else hu
    s, b = (slope or 1.0), (intercept or 0.0)
    ds.PixelData = np.rint((hu - b) / s).astype(np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def pixel_points(ds: Dataset) -> np.ndarray:
    """Physical position (rows, columns, 3) of every pixel of ``ds`` (PS3.3 C.7.6.2.1.1)."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r = np.arange(int(ds.Rows))[:, None, None]
    c = np.arange(int(ds.Columns))[None, :, None]
    return ipp + c * dc * iop[:3] + r * dr * iop[3:]


def stack(
    positions: Sequence[Sequence[float]], *, values: Values | None = None, **kw: object
) -> list[Dataset]:
    """One series of slices at ``positions``; pixel values from ``values`` at each pixel centre."""
    series_uid, study_uid = generate_uid(), generate_uid()
    out = []
    for k, p in enumerate(positions):
        ds = ct_slice(p, series_uid=series_uid, study_uid=study_uid, instance_number=k + 1, **kw)  # type: ignore[arg-type]
        if values is not None:
            hu = values(pixel_points(ds))
            s, b = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            ds.PixelData = np.rint((hu - b) / s).astype(np.int16).tobytes()
        out.append(ds)
    return out


def z_positions(n: int, spacing_mm: float, x0: float = -5.0, y0: float = -4.0) -> list[list[float]]:
    return [[x0, y0, k * spacing_mm] for k in range(n)]


def write(datasets: Sequence[Dataset], folder: Path, names: Sequence[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        p = folder / (names[i] if names else f"{i:04d}.dcm")
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def clone(ds: Dataset, **attrs: object) -> Dataset:
    out = copy.deepcopy(ds)
    for k, v in attrs.items():
        setattr(out, k, v)
    if "SOPInstanceUID" in attrs:
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def read_all(paths: Sequence[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def make_series(template: Dataset, n: int = 12, *, spacing_mm: float = 5.0,
                study_uid: str | None = None, series_uid: str | None = None,
                images_in_acquisition: int | None = None, **attrs: object) -> list[Dataset]:
    """n slices of one series with fresh UIDs, positions along z and instance numbers."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    out = []
    for i in range(n):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-115.0, -115.0, float(i) * spacing_mm]
        ds.SliceLocation = float(i) * spacing_mm
        if images_in_acquisition is not None:
            ds.ImagesInAcquisition = images_in_acquisition
        for key, value in attrs.items():
            setattr(ds, key, value)
        out.append(ds)
    return out


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Save each dataset as ``<SOPInstanceUID>.dcm`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        p = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
