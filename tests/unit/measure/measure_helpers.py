"""Helpers for the measure tests: CT volumes from arrays and from synthetic studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import CTVolume, LabelMap

SITE_CLASS = {
    "lobar": "lobar",
    "lobar_subcortical": "lobar",
    "basal_ganglia": "deep",
    "deep": "deep",
    "thalamus": "deep",
    "cerebellar": "infratentorial",
    "brainstem": "infratentorial",
}


def volume_from_array(hu: np.ndarray, spacing_xyz: tuple[float, float, float]) -> CTVolume:
    img = sitk.GetImageFromArray(hu.astype(np.float32))
    img.SetSpacing(spacing_xyz)
    return CTVolume(series_instance_uid="1.2.3", study_instance_uid="1.2", image=img, slices=(),
                    orientation=(1, 0, 0, 0, 1, 0), pixel_spacing_mm=(spacing_xyz[1], spacing_xyz[0]),
                    rows=hu.shape[1], columns=hu.shape[2])


def labels_like(volume: CTVolume, labels: np.ndarray) -> LabelMap:
    img = sitk.GetImageFromArray(labels.astype(np.uint8))
    img.CopyInformation(volume.image)
    return LabelMap(image=img, backend="truth", model="truth", model_version="1")


def read_study(dicom_dir: Path, label_path: Path | None = None) -> tuple[CTVolume, LabelMap | None]:
    """The series as a CTVolume (HU from the rescale, float32) and its label map (same grid)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_dir)))
    img = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    volume = CTVolume(series_instance_uid="1.2.3", study_instance_uid="1.2", image=img, slices=(),
                      orientation=(1, 0, 0, 0, 1, 0), pixel_spacing_mm=tuple(img.GetSpacing()[:2]),
                      rows=img.GetSize()[1], columns=img.GetSize()[0])
    if label_path is None:
        return volume, None
    lab = sitk.Cast(sitk.ReadImage(str(label_path)), sitk.sitkUInt8)
    return volume, LabelMap(image=lab, backend="truth", model="truth", model_version="1")


# (seed, site, design volume mL): two per site, 128 matrix, 5 mm slices (about 1.6 s each)
PHANTOMS = [
    (7, "lobar", 25.0), (8, "lobar", 6.0),
    (9, "lobar_subcortical", 12.0), (10, "lobar_subcortical", 4.0),
    (11, "basal_ganglia", 30.0), (12, "basal_ganglia", 8.0),
    (13, "thalamus", 10.0), (14, "thalamus", 3.0),
    (15, "cerebellar", 15.0), (16, "cerebellar", 5.0),
    (17, "brainstem", 6.0), (18, "brainstem", 2.0),
]


