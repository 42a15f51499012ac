"""The real GE head CT (18.5 deg gantry tilt, gaps of 1.08 to 7 mm) against its own headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from dicomnode.domain import CTVolume
from dicomnode.geometry.source_grid import to_source_grid
from dicomnode.load.volume import load_series


@pytest.fixture(scope="module")
def ge(ge_paths: list[Path]) -> tuple[CTVolume, list[pydicom.Dataset]]:
    return load_series(ge_paths), [pydicom.dcmread(p) for p in ge_paths]


def _headers(dss: list[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in dss])
    order = np.argsort(ipp @ normal)
    return iop, normal, ipp[order], order


def _to_index(img: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) index of LPS points, from the image's own geometry."""
    m = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    return (pts - np.array(img.GetOrigin())) @ np.linalg.inv(m).T


def test_ge_grid_follows_the_headers(ge: tuple[CTVolume, list[pydicom.Dataset]]) -> None:
    vol, dss = ge
    iop, normal, ipp, _ = _headers(dss)
    img = vol.image
    assert vol.resampled and len(vol.slices) == 28 and vol.warnings == ()
    assert img.GetPixelID() == sitk.sitkFloat32
    d = np.array(img.GetDirection()).reshape(3, 3)
    assert np.allclose(d[:, 0], iop[:3], atol=1e-6) and np.allclose(d[:, 1], iop[3:], atol=1e-6)
    assert np.allclose(d[:, 2], normal, atol=1e-9)
    # z: from the first to the last IPP along the normal, step about the median gap (4 mm)
    w = ipp @ normal
    nz = img.GetSize()[2]
    assert (nz - 1) * img.GetSpacing()[2] == pytest.approx(w[-1] - w[0], abs=1e-6)
    assert np.array(img.GetOrigin()) @ normal == pytest.approx(w[0], abs=1e-6)
    assert img.GetSpacing()[2] == pytest.approx(np.median(np.diff(w)), rel=0.01)
    assert np.diff(w).min() == pytest.approx(1.08, abs=0.01)
    assert np.diff(w).max() == pytest.approx(7.0, abs=0.01)
    # in-plane spacing is the pixel spacing; the Slice Thickness (4 and 7 mm) plays no part
    ps = [float(v) for v in dss[0].PixelSpacing]
    assert img.GetSpacing()[:2] == pytest.approx((ps[1], ps[0]))
    assert vol.header["slice_thickness_mm"] == 4.0 and vol.header["kernel"] == "STD+"
    assert vol.header["manufacturer"] == "GE MEDICAL SYSTEMS"
    # every source pixel centre (the four corners of every plane) lies inside the output grid
    rows, cols = int(dss[0].Rows), int(dss[0].Columns)
    for p in ipp:
        for r, c in ((0, 0), (0, cols - 1), (rows - 1, 0), (rows - 1, cols - 1)):
            pt = p + c * ps[1] * iop[:3] + r * ps[0] * iop[3:]
            idx = _to_index(img, pt[None])[0]
            assert np.all(idx > -0.5 - 1e-6) and np.all(idx < np.array(img.GetSize()) - 0.5 + 1e-6)
    # and every output voxel centre lies within the slab along the normal
    z_mm = np.array(img.GetOrigin()) @ normal + np.arange(nz) * img.GetSpacing()[2]
    assert z_mm.min() >= w[0] - 1e-6 and z_mm.max() <= w[-1] + 1e-6
    assert [s.position_mm for s in vol.slices] == [tuple(p) for p in ipp]


def test_ge_source_pixels_have_the_same_hu_in_the_output(ge: tuple[CTVolume, list[pydicom.Dataset]]) -> None:
    vol, dss = ge
    iop, _, _, order = _headers(dss)
    a = sitk.GetArrayViewFromImage(vol.image)
    for k in (0, 5, 13, 27):  # planes that fall on (or 0.01 mm from) an output plane
        ds = dss[order[k]]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
        pts = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        xyz = _to_index(vol.image, pts)
        got = map_coordinates(a, [xyz[..., 2], xyz[..., 1], xyz[..., 0]], order=1, mode="nearest")
        # compare in smooth soft tissue, where interpolation cannot change the value much
        smooth = np.zeros_like(hu, dtype=bool)
        inner = hu[1:-1, 1:-1]
        local = np.max([np.abs(hu[1 + dy : hu.shape[0] - 1 + dy, 1 + dx : hu.shape[1] - 1 + dx] - inner)
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        smooth[1:-1, 1:-1] = (local < 30) & (inner > -50) & (inner < 100)
        assert smooth.sum() > 5000
        diff = np.abs(got - hu)[smooth]
        assert np.median(diff) < 2.0 and np.percentile(diff, 95) < 8.0, (k, np.median(diff))


def test_ge_labels_go_back_to_the_source_planes(ge: tuple[CTVolume, list[pydicom.Dataset]]) -> None:
    vol, dss = ge
    _, _, _, order = _headers(dss)
    bone = sitk.Cast(sitk.BinaryThreshold(vol.image, 300.0, 5000.0, 1, 0), sitk.sitkUInt8)
    back = to_source_grid(bone, vol)
    assert back.shape == (28, 512, 512) and back.dtype == np.uint8
    truth = np.stack([(dss[i].pixel_array * float(dss[i].RescaleSlope)
                       + float(dss[i].RescaleIntercept)) >= 300 for i in order])
    inter = np.count_nonzero(truth & (back == 1))
    assert 2 * inter / (np.count_nonzero(truth) + np.count_nonzero(back)) > 0.9
