"""DICOM output: geometry round trip, conformance (dciodvfy), compression, tilt."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomnode.lab.synth import make_study


def _read_series(dicom_dir):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_dir)))
    return reader.Execute()


def test_dicom_geometry_matches_label_map(small_study):
    img = _read_series(small_study.dicom_dir)
    lab = sitk.ReadImage(str(small_study.label_path))
    assert img.GetSize() == lab.GetSize() == (64, 64, 16)
    np.testing.assert_allclose(img.GetOrigin(), lab.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(img.GetSpacing(), lab.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(img.GetDirection(), lab.GetDirection(), atol=1e-6)
    hu = sitk.GetArrayFromImage(img)
    labels = sitk.GetArrayFromImage(lab)
    # the label sits on the haematoma: same voxels, same physical place
    assert np.median(hu[labels == 1]) > 50
    assert np.median(hu[labels == 0]) < 50


def test_header_attributes(small_study):
    files = sorted(small_study.dicom_dir.glob("*.dcm"))
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CT" and ds.BodyPartExamined == "HEAD"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert ds.ImagesInAcquisition == 16 and ds.AcquisitionNumber == 1
    assert ds.PatientName == "SYNTH^0011" and ds.PatientID == "SYNTH-0011"
    assert "SYNTHETIC" in ds.StudyDescription and "SYNTHETIC" in ds.SeriesDescription
    assert ds.StudyInstanceUID == small_study.study_instance_uid
    assert float(ds.RescaleSlope) == 1 and ds.ConvolutionKernel


def test_tilted_stack_geometry(tmp_path):
    t = make_study(tmp_path, seed=3, matrix=64, n_slices=12, tilt_deg=15.0)
    files = sorted(t.dicom_dir.glob("*.dcm"))
    first, second = (pydicom.dcmread(f) for f in files[:2])
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    step = np.subtract(second.ImagePositionPatient, first.ImagePositionPatient, dtype=float)
    assert float(first.GantryDetectorTilt) == 15.0
    normal = np.cross(iop[:3], iop[3:])
    # planes 5 mm apart along their normal, table steps along z (sheared, like real scanners)
    assert float(step @ normal) == pytest.approx(5.0, abs=1e-4)
    np.testing.assert_allclose(step[:2], 0, atol=1e-5)
    aff = nib.load(t.label_path).affine
    sp = float(first.PixelSpacing[0])
    lps = np.diag([-1, -1, 1])
    np.testing.assert_allclose(lps @ aff[:3, 0], iop[:3] * sp, atol=1e-5)
    np.testing.assert_allclose(lps @ aff[:3, 1], iop[3:] * sp, atol=1e-5)
    np.testing.assert_allclose(lps @ aff[:3, 2], step, atol=1e-4)
    np.testing.assert_allclose(lps @ aff[:3, 3], np.array(first.ImagePositionPatient, float), atol=1e-4)


@pytest.mark.parametrize("compress", ["jpegls", "j2k"])
def test_lossless_compression_round_trips(tmp_path, compress):
    plain = make_study(tmp_path / "n", seed=6, matrix=64, n_slices=4)
    packed = make_study(tmp_path / "c", seed=6, matrix=64, n_slices=4, compress=compress)
    for a, b in zip(
        sorted(plain.dicom_dir.glob("*.dcm")), sorted(packed.dicom_dir.glob("*.dcm")), strict=True
    ):
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        assert db.file_meta.TransferSyntaxUID.is_compressed
        assert da.SOPInstanceUID == db.SOPInstanceUID
        np.testing.assert_array_equal(da.pixel_array, db.pixel_array)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) absent")
@pytest.mark.parametrize(
    "kw", [{}, {"compress": "jpegls"}, {"compress": "j2k"}, {"tilt_deg": 12.0}, {"hemorrhage_ml": None}]
)
def test_dciodvfy_reports_no_errors(tmp_path, kw):
    t = make_study(tmp_path, seed=8, matrix=64, n_slices=4, **kw)
    for f in sorted(t.dicom_dir.glob("*.dcm"))[:2]:
        out = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        text = out.stdout + out.stderr
        assert not [ln for ln in text.splitlines() if "Error" in ln], text
        assert not [ln for ln in text.splitlines() if "Warning" in ln], text
