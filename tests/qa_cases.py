"""The QA hard cases, made from synthetic phantoms (or the real GE scan) by our own code.

Each maker reads a series folder, changes its pixels or headers the way the real problem does,
and writes a new series (fresh Series and SOP Instance UIDs) into ``out``:

- ``zeroed``: bone and air set to 0 HU, as a research pre-processing export does (the issue's
  463 mL "ICH" case): every voxel below 0 or above 100 HU becomes 0;
- ``partial``: only the lower half of the slices (the brain is cut above the ventricles);
- ``noisy``: Gaussian noise of 30 HU SD added (an ultra-low-dose scan);
- ``metal``: a 3000 HU clip with dark and bright streaks through the brain on its slices;
- ``child``: Patient's Age 008Y;
- ``offset``: every HU shifted by +60 (a scanner out of calibration);
- ``cta``, ``post_contrast``, ``perfusion`` (eligibility, not QA): Contrast/Bolus Agent and
  "CTA Head"; "HEAD C+" in the description only; four acquisitions over the same positions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid


def _hu(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _store(ds: Dataset, hu: np.ndarray) -> None:
    raw = np.round((hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope))
    if int(ds.PixelRepresentation) == 0:
        raw = np.clip(raw, 0, 2 ** int(ds.BitsStored) - 1).astype(np.uint16)
    else:
        lim = 2 ** (int(ds.BitsStored) - 1)
        raw = np.clip(raw, -lim, lim - 1).astype(np.int16)
    ds.PixelData = raw.tobytes()


def _series(src: Path) -> list[Dataset]:
    files = [pydicom.dcmread(p) for p in sorted(Path(src).rglob("*")) if p.is_file()
             and not p.name.startswith(("LICENSE", "README"))]
    files = [ds for ds in files if "PixelData" in ds]
    for ds in files:
        ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
    return sorted(files, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _write(datasets: list[Dataset], out: Path, description: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i, ds in enumerate(datasets):
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = f"Head {description}"
        ds.save_as(out / f"IM{i:04d}.dcm", enforce_file_format=True)
    return out


def zeroed(src: Path, out: Path) -> Path:
    series = _series(src)
    for ds in series:
        hu = _hu(ds)
        _store(ds, np.where((hu < 0) | (hu > 100), 0.0, hu))
    return _write(series, out, "zeroed")


def partial(src: Path, out: Path) -> Path:
    series = _series(src)
    return _write(series[: len(series) // 2], out, "partial")


def noisy(src: Path, out: Path, sd_hu: float = 30.0) -> Path:
    rng = np.random.default_rng(7)
    series = _series(src)
    for ds in series:
        hu = _hu(ds)
        _store(ds, np.where(hu > -900, hu + rng.normal(0.0, sd_hu, hu.shape), hu))
    return _write(series, out, "low dose")  # eligible: only dose pages are excluded by name


def metal(src: Path, out: Path) -> Path:
    series = _series(src)
    mid = len(series) // 2
    for ds in series[mid - 1: mid + 2]:
        hu = _hu(ds)
        rows, cols = hu.shape
        sy, sx = (float(v) for v in ds.PixelSpacing)
        yy, xx = np.mgrid[0:rows, 0:cols]
        cy, cx = rows * 0.45, cols * 0.55
        r_mm = np.hypot((yy - cy) * sy, (xx - cx) * sx)
        angle = np.arctan2((yy - cy) * sy, (xx - cx) * sx)
        streaks = 150.0 * np.cos(8 * angle) * np.exp(-r_mm / 60.0) * (hu > -200)
        hu = hu + streaks
        hu[r_mm <= 4.0] = 3000.0
        _store(ds, hu)
    return _write(series, out, "clip")


def child(src: Path, out: Path) -> Path:
    series = _series(src)
    for ds in series:
        ds.PatientAge = "008Y"
    return _write(series, out, "child")


def offset(src: Path, out: Path, hu_shift: float = 60.0) -> Path:
    series = _series(src)
    for ds in series:
        hu = _hu(ds)
        _store(ds, np.where(hu > -900, hu + hu_shift, hu))
    return _write(series, out, "offset")


def _rewrite(src: Path, out: Path, change: Callable[[Dataset, int], list[Dataset]]) -> Path:
    """Every instance of ``src`` through ``change`` (which may multiply it), in a new series."""
    out.mkdir(parents=True)
    series_uid = generate_uid()
    for i, path in enumerate(sorted(src.rglob("*.dcm"))):
        for ds in change(pydicom.dcmread(path), i):
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return out


def cta(src: Path, out: Path) -> Path:
    def change(ds: Dataset, _: int) -> list[Dataset]:
        ds.ContrastBolusAgent, ds.ContrastBolusRoute = "IOPAMIDOL 370", "IV"
        ds.SeriesDescription = "CTA Head"
        return [ds]
    return _rewrite(src, out, change)


def post_contrast(src: Path, out: Path) -> Path:
    def change(ds: Dataset, _: int) -> list[Dataset]:
        ds.SeriesDescription = "HEAD C+ 5mm"  # the contrast only in the description
        return [ds]
    return _rewrite(src, out, change)


def perfusion(src: Path, out: Path) -> Path:
    def change(ds: Dataset, _: int) -> list[Dataset]:
        phases = [copy.deepcopy(ds) for _ in range(4)]
        for n, phase in enumerate(phases):
            phase.AcquisitionNumber = n + 1  # four passes over the same positions
        return phases
    return _rewrite(src, out, change)


MAKERS: dict[str, Callable[[Path, Path], Path]] = {
    "zeroed": zeroed, "partial": partial, "noisy": noisy, "metal": metal, "child": child,
    "offset": offset}
