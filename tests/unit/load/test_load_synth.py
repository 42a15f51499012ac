"""Synthetic studies from dicomnode.lab.synth: tilt, round trips, compression, Enhanced CT."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy.ndimage import map_coordinates

from dicomnode.geometry.source_grid import to_source_grid
from dicomnode.lab.synth import StudyTruth
from dicomnode.load.volume import load_series
from tests.ct_series import files


def truth_labels(study: StudyTruth) -> tuple[np.ndarray, np.ndarray]:
    """The exact label map (slice, row, column) and its index -> LPS affine (sheared if tilted)."""
    img = nib.load(study.label_path)
    data = np.asarray(img.dataobj).transpose(2, 1, 0).astype(np.uint8)
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.get_sform()
    return data, affine_lps


def labels_on_grid(truth: np.ndarray, affine_lps: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of the NIfTI truth onto ``grid`` (independent of the loader)."""
    nx, ny, nz = grid.GetSize()
    d = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    pts = np.array(grid.GetOrigin()) + np.stack([xx, yy, zz], -1) @ d.T
    ijk = (pts - affine_lps[:3, 3]) @ np.linalg.inv(affine_lps[:3, :3]).T  # (col, row, slice)
    idx = np.rint(ijk).astype(int)
    shape = truth.shape  # (slice, row, column)
    ok = ((idx >= 0) & (idx < np.array([shape[2], shape[1], shape[0]]))).all(-1)
    out = np.zeros((nz, ny, nx), dtype=np.uint8)
    out[ok] = truth[idx[ok][:, 2], idx[ok][:, 1], idx[ok][:, 0]]
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(grid)
    return img


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def test_untilted_study_round_trips_exactly(synth_plain: StudyTruth) -> None:
    vol = load_series(files(synth_plain.dicom_dir))
    assert not vol.resampled and len(vol.slices) == synth_plain.n_slices
    truth, _ = truth_labels(synth_plain)
    # the NIfTI written by the generator (qform = sform) has exactly the loader's geometry
    nifti = sitk.ReadImage(str(synth_plain.label_path))
    assert nifti.GetSize() == vol.image.GetSize()
    assert np.allclose(nifti.GetOrigin(), vol.image.GetOrigin(), atol=1e-3)
    assert np.allclose(nifti.GetSpacing(), vol.image.GetSpacing(), atol=1e-5)
    assert np.allclose(nifti.GetDirection(), vol.image.GetDirection(), atol=1e-6)
    back = to_source_grid(sitk.Cast(nifti, sitk.sitkUInt8), vol)
    assert back.dtype == np.uint8 and back.shape == truth.shape
    assert np.array_equal(back, truth)
    # and a label image on exactly volume.image's grid comes back unchanged
    lab = sitk.GetImageFromArray(truth)
    lab.CopyInformation(vol.image)
    assert np.array_equal(to_source_grid(lab, vol), truth)
    assert vol.header["patient_age_y"] == synth_plain.details["age_y"]
    assert vol.header["patient_sex"] == synth_plain.details["sex"]


def test_tilted_study_labels_go_back_to_the_source_grid(synth_tilted: StudyTruth) -> None:
    vol = load_series(files(synth_tilted.dicom_dir))
    assert vol.resampled and any("tilt about 15.0 deg" in r for r in vol.header["resample_reasons"])
    truth, affine = truth_labels(synth_tilted)
    assert np.count_nonzero(truth == 1) > 100
    labels = labels_on_grid(truth, affine, vol.image)
    back = to_source_grid(labels, vol)
    assert back.shape == truth.shape
    for value in (1, 3):
        assert dice(back == value, truth == value) >= 0.95
    # on a finer grid along the normal too
    fine = load_series(files(synth_tilted.dicom_dir), target_spacing_mm=2.0)
    back = to_source_grid(labels_on_grid(truth, affine, fine.image), fine)
    assert dice(back == 1, truth == 1) >= 0.95


def test_tilted_study_hu_matches_the_source_planes(synth_tilted: StudyTruth) -> None:
    """The source pixels seen through the resampled volume (linear) agree with the stored HU."""
    paths = files(synth_tilted.dicom_dir)
    vol = load_series(paths)
    a = sitk.GetArrayFromImage(vol.image)
    img = vol.image
    inv = np.linalg.inv(np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing()))
    diffs = []
    for path in paths[8:24:3]:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
        pts = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        xyz = (pts - np.array(img.GetOrigin())) @ inv.T
        got = map_coordinates(a, [xyz[..., 2], xyz[..., 1], xyz[..., 0]], order=1, mode="nearest")
        diffs.append(np.abs(got - hu)[8:-8, 8:-8])
    d = np.concatenate([x.ravel() for x in diffs])
    # the double (in-plane) linear interpolation blurs edges of a 4 mm-pixel phantom; most agree
    assert np.median(d) < 3.0


@pytest.mark.parametrize("fixture", ["synth_jpegls", "synth_j2k"])
def test_compressed_studies_load_to_the_same_hu(
    synth_plain: StudyTruth, fixture: str, request: pytest.FixtureRequest
) -> None:
    study: StudyTruth = request.getfixturevalue(fixture)
    ts = pydicom.dcmread(files(study.dicom_dir)[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert ts.is_compressed
    ref = load_series(files(synth_plain.dicom_dir))
    vol = load_series(files(study.dicom_dir))
    assert np.array_equal(sitk.GetArrayViewFromImage(vol.image), sitk.GetArrayViewFromImage(ref.image))
    assert vol.image.GetOrigin() == ref.image.GetOrigin()


def _enhanced(study: StudyTruth, folder: Path) -> Path:
    single = [pydicom.dcmread(p) for p in files(study.dicom_dir)]
    mf = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        single, series_instance_uid=generate_uid(), series_number=3,
        sop_instance_uid=generate_uid(), instance_number=1,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "enhanced.dcm"
    mf.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("fixture", ["synth_plain", "synth_tilted"])
def test_legacy_converted_enhanced_ct_loads_like_the_single_frames(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    study: StudyTruth = request.getfixturevalue(fixture)
    ref = load_series(files(study.dicom_dir))
    path = _enhanced(study, tmp_path)
    vol = load_series([path])
    assert vol.resampled == ref.resampled
    assert np.array_equal(sitk.GetArrayViewFromImage(vol.image), sitk.GetArrayViewFromImage(ref.image))
    assert np.allclose(vol.image.GetOrigin(), ref.image.GetOrigin())
    assert np.allclose(vol.image.GetSpacing(), ref.image.GetSpacing())
    assert np.allclose(vol.image.GetDirection(), ref.image.GetDirection())
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert {s.sop_instance_uid for s in vol.slices} == {sop}
    assert sorted(s.frame_number for s in vol.slices) == list(range(1, len(ref.slices) + 1))
    assert [s.position_mm for s in vol.slices] == [s.position_mm for s in ref.slices]
    assert vol.header["kernel"] == "STANDARD" and vol.header["slice_thickness_mm"] == 5.0


def test_enhanced_ct_per_frame_groups(synth_plain: StudyTruth, tmp_path: Path) -> None:
    """Pixel measures and rescale per frame instead of shared; one frame with its own rescale."""
    ref = load_series(files(synth_plain.dicom_dir))
    ds = pydicom.dcmread(_enhanced(synth_plain, tmp_path / "a"))
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures, rescale = shared.PixelMeasuresSequence, shared.PixelValueTransformationSequence
    del shared.PixelMeasuresSequence, shared.PixelValueTransformationSequence
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PixelMeasuresSequence = pydicom.Sequence([copy.deepcopy(measures[0])])
        item.PixelValueTransformationSequence = pydicom.Sequence([copy.deepcopy(rescale[0])])
    ds.PerFrameFunctionalGroupsSequence[4].PixelValueTransformationSequence[0].RescaleIntercept = "-1000"
    path = tmp_path / "per-frame.dcm"
    ds.save_as(path, enforce_file_format=True)
    vol = load_series([path])
    a, b = sitk.GetArrayViewFromImage(vol.image), sitk.GetArrayViewFromImage(ref.image)
    k = [s.frame_number for s in vol.slices].index(5)
    assert np.array_equal(np.delete(a, k, 0), np.delete(b, k, 0))
    assert np.array_equal(a[k], b[k] + 24)
