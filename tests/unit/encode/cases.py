"""Helpers of the encode tests: small synthetic studies as ``Case`` and dciodvfy.

A module of its own (not conftest) so that tests import it by its package path: pytest puts
several conftest.py folders on sys.path, and a bare ``import conftest`` may find another one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dicomnode.domain import ICH, IVH, LABELS, OEDEMA, CTVolume, LabelMap, Measurements
from dicomnode.encode import codes
from dicomnode.lab.synth import StudyTruth
from dicomnode.load.volume import load_series
from tests.dciodvfy import dciodvfy

__all__ = ["Case", "concept_name", "content_items", "dciodvfy"]  # dciodvfy: shared by every encode test


@dataclass(frozen=True)
class Case:
    """One study, loaded: datasets (headers), volume, label map, truth on the source planes.

    The cases are shared by the whole session, so ``datasets`` hands out fresh copies: a test (or
    an encoder under test) that changes a dataset cannot change what the next test sees.
    """

    study: StudyTruth
    headers: tuple[Dataset, ...]
    volume: CTVolume
    labels: LabelMap
    truth: np.ndarray  # label values on the source planes (n_slices, rows, cols), volume.slices order
    measurements: Measurements

    @property
    def datasets(self) -> tuple[Dataset, ...]:
        return tuple(copy.deepcopy(ds) for ds in self.headers)


def _files(study: StudyTruth) -> list[Path]:
    return sorted(Path(study.dicom_dir).glob("*.dcm"))


def truth_on_source_planes(study: StudyTruth) -> tuple[np.ndarray, np.ndarray]:
    """The generator's exact labels (slice, row, column) and their index -> LPS affine."""
    img = nib.load(study.label_path)
    data = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.uint8)
    return data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.get_sform()


def labels_on_grid(truth: np.ndarray, affine_lps: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of the truth onto ``grid`` (independent of the loader)."""
    nx, ny, nz = grid.GetSize()
    d = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    pts = np.array(grid.GetOrigin()) + np.stack([xx, yy, zz], -1) @ d.T
    idx = np.rint((pts - affine_lps[:3, 3]) @ np.linalg.inv(affine_lps[:3, :3]).T).astype(int)
    shape = truth.shape
    ok = ((idx >= 0) & (idx < np.array([shape[2], shape[1], shape[0]]))).all(-1)
    out = np.zeros((nz, ny, nx), dtype=np.uint8)
    out[ok] = truth[idx[ok][:, 2], idx[ok][:, 1], idx[ok][:, 0]]
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(grid)
    return img


def hand_measurements(study: StudyTruth) -> Measurements:
    return Measurements(
        ich_volume_ml=study.ich_volume_ml,
        ivh_volume_ml=study.ivh_volume_ml,
        abc2_volume_ml=0.93 * study.ich_volume_ml,
        largest_area_slice=10,
        cortical_involvement=True,
        site="lobar",
        markers={
            "hu_mean": 61.5, "hu_sd": 9.25, "hu_median": 62.0, "hypodense_fraction": 0.125,
            "sphericity": 0.81, "solidity": 0.9, "n_components": 1, "surface_area_mm2": 3600.0,
            "blend_sign_like": False, "swirl_like": True,
            "centroid_lps_mm": (1.0, 2.0, 3.0),  # not in the SR mapping: left out
            "hu_cv": float("nan"),  # not finite: left out
        },
        oedema_volume_ml=study.oedema_volume_ml,
    )


def _case(study: StudyTruth, *, tilted: bool) -> Case:
    paths = _files(study)
    datasets = tuple(pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
    volume = load_series(paths)
    truth, affine = truth_on_source_planes(study)
    if tilted:
        image = labels_on_grid(truth, affine, volume.image)
    else:
        image = sitk.Cast(sitk.ReadImage(str(study.label_path)), sitk.sitkUInt8)
        image.CopyInformation(volume.image)
    present = {v: LABELS[v] for v in (ICH, IVH, OEDEMA)}
    labels = LabelMap(image=image, backend="threshold", model="ich-unet-test", model_version="0.3.1",
                      labels=present, synthetic_training=True)
    return Case(study, datasets, volume, labels, truth, hand_measurements(study))


def content_items(ds: Dataset) -> Iterator[Dataset]:
    """Every SR content item below ``ds``, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept_name(item: Dataset) -> tuple[str, str]:
    """(code value, scheme) of an SR content item's concept name."""
    return codes.as_tuple(item.ConceptNameCodeSequence[0])
