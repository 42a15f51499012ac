"""load_series on small synthetic series: sorting, spacing, rescale, duplicates, errors."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from dicomnode.errors import VolumeError
from dicomnode.load.volume import load_series
from tests.ct_series import clone, ct_slice, stack, write, z_positions


def ramp(points: np.ndarray) -> np.ndarray:
    """HU linear in position: exact under linear interpolation."""
    return 3.0 * points[..., 0] - 2.0 * points[..., 1] + 5.0 * points[..., 2] + 10.0


def arr(volume) -> np.ndarray:
    return sitk.GetArrayFromImage(volume.image)


def test_regular_series_geometry_and_values(tmp_path: Path) -> None:
    dss = stack(z_positions(6, 2.5), values=ramp)
    vol = load_series(write(dss, tmp_path))
    assert not vol.resampled and vol.warnings == ()
    img = vol.image
    assert img.GetPixelID() == sitk.sitkFloat32
    assert img.GetSize() == (16, 12, 6)
    assert np.allclose(img.GetSpacing(), (0.7, 0.8, 2.5))  # (column, row, slice)
    assert np.allclose(img.GetOrigin(), (-5.0, -4.0, 0.0))
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    # every voxel holds the HU of its physical centre
    idx = np.stack(np.meshgrid(np.arange(16), np.arange(12), np.arange(6), indexing="ij"), -1).reshape(-1, 3)
    pts = np.array([img.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in idx])
    got = arr(vol)[idx[:, 2], idx[:, 1], idx[:, 0]]
    assert np.allclose(got, np.rint(ramp(pts) + 1024) - 1024)
    assert [s.position_mm[2] for s in vol.slices] == [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]
    assert vol.rows == 12 and vol.columns == 16 and vol.pixel_spacing_mm == (0.8, 0.7)
    assert vol.header["patient_age_y"] == 67 and vol.header["patient_sex"] == "F"
    assert vol.header["kernel"] == "H30s" and vol.header["slice_thickness_mm"] == 5.0
    assert vol.header["accession_number"] == "ACC1" and vol.header["study_date"] == "20240102"


def test_shuffled_and_reversed_order_give_the_same_volume(tmp_path: Path) -> None:
    dss = stack(z_positions(8, 3.0), values=ramp)
    ref = arr(load_series(write(dss, tmp_path / "a")))
    shuffled = write(dss, tmp_path / "b")
    random.Random(3).shuffle(shuffled)
    assert np.array_equal(arr(load_series(shuffled)), ref)
    # instance numbers and file names running against the positions
    rev = [clone(ds, InstanceNumber=len(dss) - i) for i, ds in enumerate(dss)]
    names = [f"{len(dss) - i:03d}.dcm" for i in range(len(dss))]
    assert np.array_equal(arr(load_series(write(rev, tmp_path / "c", names))), ref)


def test_normal_pointing_down_sorts_along_the_normal(tmp_path: Path) -> None:
    # row x column = (1,0,0) x (0,-1,0) = (0,0,-1): the stack runs towards feet
    dss = stack(z_positions(5, 2.0), values=ramp, orientation=(1, 0, 0, 0, -1, 0))
    vol = load_series(write(dss, tmp_path))
    d = np.array(vol.image.GetDirection()).reshape(3, 3)
    assert np.allclose(d[:, 2], (0, 0, -1)) and np.isclose(np.linalg.det(d), 1.0)
    assert [s.position_mm[2] for s in vol.slices] == [8.0, 6.0, 4.0, 2.0, 0.0]
    assert np.allclose(vol.image.GetOrigin(), (-5, -4, 8))
    a = arr(vol)
    for k in range(5):
        p = np.array(vol.image.TransformIndexToPhysicalPoint([3, 2, k]))
        assert a[k, 2, 3] == pytest.approx(np.rint(ramp(p) + 1024) - 1024)


def test_spacing_from_positions_not_slice_thickness(tmp_path: Path) -> None:
    # overlapping reconstruction: 1.25 mm slices every 1 mm
    dss = stack(z_positions(10, 1.0), thickness_mm=1.25)
    vol = load_series(write(dss, tmp_path))
    assert not vol.resampled
    assert vol.spacing_mm[2] == pytest.approx(1.0)
    assert vol.header["slice_thickness_mm"] == 1.25


def test_rescale_per_instance(tmp_path: Path) -> None:
    pos = z_positions(3, 5.0)
    hu = np.full((12, 16), 40.0)
    dss = [ct_slice(pos[0], hu=hu, slope=1.0, intercept=-1024.0, series_uid="1.9"),
           ct_slice(pos[1], hu=hu, slope=0.5, intercept=-1000.0, series_uid="1.9"),
           ct_slice(pos[2], hu=hu, slope=2.0, intercept=-3000.0, series_uid="1.9")]
    vol = load_series(write(dss, tmp_path))
    assert np.array_equal(arr(vol), np.full((3, 12, 16), 40.0, dtype=np.float32))
    assert vol.warnings == ()


def test_missing_rescale_defaults_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dss = stack(z_positions(4, 5.0), slope=None, intercept=None, hu=np.full((12, 16), 30.0))
    with caplog.at_level(logging.WARNING, logger="dicomnode.load"):
        vol = load_series(write(dss, tmp_path))
    assert np.all(arr(vol) == 30.0)
    assert len(vol.warnings) == 1 and "Rescale" in vol.warnings[0] and "4 of 4" in vol.warnings[0]
    assert any("Rescale" in r.getMessage() for r in caplog.records)
    assert not any("TEST^LOAD" in r.getMessage() or "LOAD-1" in r.getMessage() for r in caplog.records)


def test_duplicates_are_dropped_with_a_warning(tmp_path: Path) -> None:
    dss = stack(z_positions(5, 5.0), values=ramp)
    paths = write(dss, tmp_path / "a")
    ref = arr(load_series(paths))
    again = write([dss[2]], tmp_path / "b")  # same SOP Instance UID, another file
    same_pixels = write([clone(dss[3], SOPInstanceUID=generate_uid())], tmp_path / "c")
    vol = load_series([*paths, paths[1], *again, *same_pixels])
    assert np.array_equal(arr(vol), ref) and len(vol.slices) == 5
    assert any("SOP Instance UID" in w for w in vol.warnings)
    assert any("identical pixels" in w for w in vol.warnings)


def test_different_images_at_one_position_are_refused(tmp_path: Path) -> None:
    dss = stack(z_positions(4, 5.0))
    other = clone(dss[1], SOPInstanceUID=generate_uid())
    other.PixelData = np.full((12, 16), 7, dtype=np.int16).tobytes()
    with pytest.raises(VolumeError, match="different images at the same position"):
        load_series(write([*dss, other], tmp_path))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ImageOrientationPatient": [1, 0, 0, 0, 0.8, -0.6]}, "mixed orientation"),
        ({"Rows": 10, "PixelData": np.zeros((10, 16), np.int16).tobytes()}, "mixed matrix"),
        ({"PixelSpacing": [0.9, 0.7]}, "mixed pixel spacing"),
        ({"SeriesInstanceUID": "1.2.3.999"}, "2 series"),
        ({"FrameOfReferenceUID": "1.2.3.998"}, "frames of reference"),
        ({"Modality": "MR"}, "not CT"),
    ],
)
def test_inconsistent_series_raise(tmp_path: Path, change: dict, reason: str) -> None:
    dss = stack(z_positions(4, 5.0))
    dss[2] = clone(dss[2], **change)
    with pytest.raises(VolumeError, match=reason):
        load_series(write(dss, tmp_path))


def test_no_pixel_data_raises(tmp_path: Path) -> None:
    dss = stack(z_positions(3, 5.0))
    del dss[1].PixelData
    with pytest.raises(VolumeError, match="no pixel data"):
        load_series(write(dss, tmp_path))


def test_too_few_slices_or_no_files_raise(tmp_path: Path) -> None:
    paths = write(stack(z_positions(2, 5.0)), tmp_path)
    with pytest.raises(VolumeError, match="at least 2"):
        load_series(paths[:1])
    with pytest.raises(VolumeError, match="no instances"):
        load_series([])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(VolumeError, match="cannot read junk.dcm"):
        load_series([*paths, junk])
    with pytest.raises(VolumeError, match="lacks ImagePositionPatient"):
        ds = stack(z_positions(2, 5.0))
        del ds[0].ImagePositionPatient
        load_series(write(ds, tmp_path / "nopos"))


def test_tilted_series_is_resampled_exactly(tmp_path: Path) -> None:
    """Sheared stack (gantry tilt 20 deg): every covered voxel holds the ramp at its centre."""
    t = np.radians(20.0)
    orient = (1, 0, 0, 0, np.cos(t), -np.sin(t))
    pos = [[-5.0, -4.0, k * 3.0 / np.cos(t)] for k in range(7)]  # table steps along z
    dss = stack(pos, values=ramp, orientation=orient, slope=0.01, intercept=0.0)
    vol = load_series(write(dss, tmp_path))
    assert vol.resampled
    img = vol.image
    d = np.array(img.GetDirection()).reshape(3, 3)
    normal = np.cross(orient[:3], orient[3:])
    assert np.allclose(d[:, 2], normal, atol=1e-6) and np.allclose(d @ d.T, np.eye(3))
    w = np.array(pos) @ normal
    assert img.GetSpacing()[2] == pytest.approx(3.0, abs=1e-4)
    assert (img.GetSize()[2] - 1) * img.GetSpacing()[2] == pytest.approx(w[-1] - w[0])
    a = arr(vol)
    # voxels whose two bracketing source planes both cover them (inside the pixel centres)
    ipp = np.array(pos)
    row, col = np.array(orient[:3]), np.array(orient[3:])
    n_inside = 0
    for z, y, x in np.ndindex(*a.shape):
        p = np.array(img.TransformIndexToPhysicalPoint([x, y, z]))
        k = min(int(np.searchsorted(w, p @ normal, side="right")) - 1, len(w) - 2)
        rc = [((p - ipp[j]) @ col / 0.8, (p - ipp[j]) @ row / 0.7) for j in (k, k + 1)]
        if all(0 <= r <= 11 and 0 <= c <= 15 for r, c in rc):
            n_inside += 1
            assert a[z, y, x] == pytest.approx(ramp(p), abs=0.02)
    assert n_inside > 0.35 * a.size  # a 12-row matrix sheared by 9 rows: the rest is edge


def test_uneven_spacing_is_resampled_on_the_median_gap(tmp_path: Path) -> None:
    zs = [0.0, 2.0, 4.0, 6.0, 8.0, 15.0, 22.0]  # 2 mm, then 7 mm: median gap 2 mm
    dss = stack([[-5.0, -4.0, z] for z in zs], values=ramp, slope=0.01, intercept=0.0)
    vol = load_series(write(dss, tmp_path))
    assert vol.resampled and vol.image.GetSize() == (16, 12, 12)
    assert vol.spacing_mm[2] == pytest.approx(2.0)
    assert np.allclose(vol.image.GetOrigin(), (-5, -4, 0))
    a = arr(vol)
    for k in range(12):
        p = np.array(vol.image.TransformIndexToPhysicalPoint([4, 5, k]))
        assert a[k, 5, 4] == pytest.approx(ramp(p), abs=0.02)
    # not exactly 2 mm: the step is adjusted so that whole steps span the stack
    vol = load_series(write(stack([[-5.0, -4.0, z] for z in [*zs, 29.0]]), tmp_path / "b"))
    assert vol.image.GetSize()[2] == 15 and vol.spacing_mm[2] == pytest.approx(29.0 / 14)


def test_target_spacing(tmp_path: Path) -> None:
    dss = stack(z_positions(5, 5.0), values=ramp, slope=0.01, intercept=0.0)
    vol = load_series(write(dss, tmp_path), target_spacing_mm=2.5)
    assert vol.resampled and vol.image.GetSize()[2] == 9 and vol.spacing_mm[2] == pytest.approx(2.5)
    same = load_series(write(dss, tmp_path / "b"), target_spacing_mm=5.0)
    assert not same.resampled
