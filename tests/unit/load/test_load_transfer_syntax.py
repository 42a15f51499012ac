"""Every transfer syntax the node accepts decodes to the same HU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicomnode.errors import VolumeError
from dicomnode.lab.synth import StudyTruth
from dicomnode.load.volume import load_series
from tests.ct_series import files

N = 4  # slices per series: enough for a volume, quick to encode


@pytest.fixture(scope="module")
def reference(synth_plain: StudyTruth) -> np.ndarray:
    return sitk.GetArrayFromImage(load_series(files(synth_plain.dicom_dir)[:N]).image)


def _recode(study: StudyTruth, folder: Path, syntax: pydicom.uid.UID, **kw: object) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in files(study.dicom_dir)[:N]:
        ds = pydicom.dcmread(p)
        if syntax.is_compressed:
            ds.compress(syntax, **kw)  # type: ignore[arg-type]
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(folder / p.name, enforce_file_format=True)
        out.append(folder / p.name)
    return out


@pytest.mark.parametrize(
    ("syntax", "kw", "max_err_hu"),
    [
        (ImplicitVRLittleEndian, {}, 0),
        (DeflatedExplicitVRLittleEndian, {}, 0),
        (RLELossless, {}, 0),
        (JPEGLSLossless, {}, 0),
        (JPEGLSNearLossless, {"jls_error": 2}, 2),
        (JPEG2000Lossless, {}, 0),
        (JPEG2000, {"j2k_psnr": [80]}, 10),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_pydicom_encoded_syntaxes(synth_plain: StudyTruth, reference: np.ndarray, tmp_path: Path,
                                  syntax: pydicom.uid.UID, kw: dict, max_err_hu: float) -> None:
    paths = _recode(synth_plain, tmp_path, syntax, **kw)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    got = sitk.GetArrayFromImage(load_series(paths).image)
    assert np.abs(got - reference).max() <= max_err_hu


@pytest.mark.dcmtk
@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmcjpeg (DCMTK) not installed")
@pytest.mark.parametrize(("option", "max_err_hu"), [("+e1", 0), ("+el", 0), ("+eb", 20), ("+ee", None)],
                         ids=["lossless-SV1", "lossless-P14", "baseline-8bit", "extended-12bit"])
def test_dcmtk_jpeg_syntaxes(synth_plain: StudyTruth, reference: np.ndarray, tmp_path: Path,
                             option: str, max_err_hu: float | None) -> None:
    paths = []
    for p in files(synth_plain.dicom_dir)[:N]:
        out = tmp_path / p.name
        subprocess.run(["dcmcjpeg", option, str(p), str(out)], check=True, capture_output=True)
        paths.append(out)
    if max_err_hu is None:  # 12-bit JPEG Extended: no installed decoder, and the node refuses it
        with pytest.raises(VolumeError, match="cannot decode .*JPEG Extended"):
            load_series(paths)
        return
    got = sitk.GetArrayFromImage(load_series(paths).image)
    err = np.abs(got - reference)
    if max_err_hu == 0:
        assert err.max() == 0
    else:  # DCMTK squeezes 12 bits into 8 (16 HU a step, rescale adjusted) and compresses lossily
        assert np.median(err) <= max_err_hu


def test_undecodable_pixel_data_raises(synth_plain: StudyTruth, tmp_path: Path) -> None:
    paths = _recode(synth_plain, tmp_path, RLELossless)
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = ds.PixelData[:200]  # truncated fragment
    ds.save_as(paths[1], enforce_file_format=True)
    with pytest.raises(VolumeError, match="cannot decode"):
        load_series(paths)
