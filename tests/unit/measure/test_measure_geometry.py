"""Volumes, ABC/2 and shape markers on analytic masks (ellipsoids, spheres, an L shape)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from measure_helpers import labels_like, volume_from_array

from dicomnode.domain import ICH, IVH, OEDEMA
from dicomnode.measure import measure
from dicomnode.measure.markers import convex_hull_mm3, shape_markers
from dicomnode.measure.volumes import abc2, feret_a_b, volume_ml


def ellipsoid(semi_xyz_mm, spacing_xyz, shape_zyx, centre_offset_mm=(0.0, 0.0, 0.0)):
    """Bool (z, y, x): voxel centres inside the ellipsoid (centred on the grid)."""
    axes = []
    for n, s, off in zip(shape_zyx, spacing_xyz[::-1], centre_offset_mm[::-1], strict=True):
        axes.append((np.arange(n) - (n - 1) / 2) * s - off)
    z, y, x = np.meshgrid(*axes, indexing="ij")
    a, b, c = semi_xyz_mm
    return (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1.0


def test_ellipsoid_volume_within_1_percent_at_fine_spacing():
    sp = (0.5, 0.5, 0.5)
    m = ellipsoid((20.0, 15.0, 10.0), sp, (48, 68, 88))
    true_ml = 4 / 3 * math.pi * 20 * 15 * 10 / 1000
    assert volume_ml(m, sp[::-1]) == pytest.approx(true_ml, rel=0.01)


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.5), (0.5, 0.5, 5.0)])
def test_abc2_of_an_ellipsoid(spacing):
    # axes along x, y, z: A = 2a, B = 2b, C = 2c, so ABC/2 = 4abc (vs 4/3 pi abc true volume)
    a, b, c = 20.0, 15.0, 25.0
    shape = (int(60 / spacing[2]) + 1, 80, 100)
    m = ellipsoid((a, b, c), spacing, shape, centre_offset_mm=(0.25, 0.25, 0.0))
    est = abc2(m, spacing[::-1])
    assert est.a_mm == pytest.approx(2 * a, rel=0.03)
    assert est.b_mm == pytest.approx(2 * b, rel=0.03)
    # C is a count of slices: within one slice of 2c
    assert abs(est.c_mm - 2 * c) <= spacing[2] + 1e-6
    expected = (2 * a) * (2 * b) * est.c_mm / 2 / 1000
    assert est.volume_ml == pytest.approx(expected, rel=0.05)
    # against the analytic A*B*C/2 = 4abc: within the sampling error of C (one slice)
    assert est.volume_ml == pytest.approx(4 * a * b * c / 1000, rel=0.04 + spacing[2] / (2 * c))
    assert est.slice_index == int(np.argmax(m.sum(axis=(1, 2))))


def test_feret_of_a_rotated_rectangle():
    # a 40 x 10 mm bar at 30 degrees: A is its diagonal-ish length, B about its width
    yy, xx = np.mgrid[0:200, 0:200] * 0.5
    t = math.radians(30)
    u = (xx - 50) * math.cos(t) + (yy - 50) * math.sin(t)
    v = -(xx - 50) * math.sin(t) + (yy - 50) * math.cos(t)
    bar = (np.abs(u) <= 20) & (np.abs(v) <= 5)
    a, b = feret_a_b(bar, 0.5, 0.5)
    assert a == pytest.approx(math.hypot(40, 10), rel=0.03)
    assert b == pytest.approx(40 * 10 / math.hypot(40, 10) * 2, rel=0.1)  # width across the diagonal


def test_sphere_sphericity_and_solidity():
    sp = (1.0, 1.0, 1.0)
    m = ellipsoid((15.0, 15.0, 15.0), sp, (40, 40, 40))
    s = shape_markers(m, sp)
    assert s["sphericity"] == pytest.approx(1.0, abs=0.03)
    assert s["solidity"] > 0.9
    assert s["surface_area_mm2"] == pytest.approx(4 * math.pi * 15**2, rel=0.03)
    assert s["n_components"] == 1 and s["n_satellites"] == 0
    assert s["extent"] == pytest.approx(math.pi / 6, rel=0.05)


def test_sphere_with_5mm_slices():
    sp = (0.5, 0.5, 5.0)  # x, y, z
    m = ellipsoid((15.0, 15.0, 15.0), sp, (9, 80, 80), centre_offset_mm=(0.0, 0.0, 0.0))
    s = shape_markers(m, sp[::-1])
    assert s["sphericity"] == pytest.approx(1.0, abs=0.1)
    assert s["solidity"] > 0.8
    assert volume_ml(m, sp[::-1]) == pytest.approx(4 / 3 * math.pi * 15**3 / 1000, rel=0.05)


def test_l_shape_has_low_solidity_and_satellites_are_counted():
    m = np.zeros((10, 40, 40), dtype=bool)
    m[2:8, 5:35, 5:12] = True
    m[2:8, 28:35, 5:35] = True
    s = shape_markers(m, (1.0, 1.0, 1.0))
    assert s["solidity"] < 0.8
    m[2:4, 15:17, 25:27] = True  # a separate focus
    assert shape_markers(m, (1.0, 1.0, 1.0))["n_satellites"] == 1


def test_convex_hull_of_a_box_is_the_box():
    m = np.ones((3, 4, 5), dtype=bool)
    assert convex_hull_mm3(np.pad(m, 1), (2.0, 1.0, 1.0)) == pytest.approx(3 * 2 * 4 * 5)


def test_no_ich_gives_zeros_and_none():
    hu = np.full((6, 32, 32), 30.0)
    vol = volume_from_array(hu, (1.0, 1.0, 5.0))
    lab = np.zeros(hu.shape, dtype=np.uint8)
    lab[2, 5:8, 5:8] = OEDEMA
    m = measure(vol, labels_like(vol, lab))
    assert (m.ich_volume_ml, m.ivh_volume_ml, m.abc2_volume_ml) == (0.0, 0.0, 0.0)
    assert m.site == "none" and m.cortical_involvement is False and m.largest_area_slice is None
    assert m.oedema_volume_ml == pytest.approx(9 * 5 / 1000)
    assert m.extra_axial_volume_ml == 0.0


def test_measure_on_an_ellipsoid_in_a_uniform_volume():
    sp = (0.5, 0.5, 5.0)
    shape = (13, 100, 100)
    m = ellipsoid((15.0, 10.0, 20.0), sp, shape)
    lab = np.where(m, ICH, 0).astype(np.uint8)
    lab[0, :3, :3] = IVH
    hu = np.where(m, 70.0, 30.0)
    vol = volume_from_array(hu, sp)
    out = measure(vol, labels_like(vol, lab))
    assert out.ich_volume_ml == pytest.approx(m.sum() * 1.25 / 1000)
    assert out.ivh_volume_ml == pytest.approx(9 * 1.25 / 1000)
    assert out.largest_area_slice == 6
    assert out.markers["hu_mean"] == pytest.approx(70.0)
    assert out.markers["hypodense_fraction"] == 0.0
    assert out.markers["blend_sign_like"] is False
    assert isinstance(out.site, str) and isinstance(out.cortical_involvement, bool)


def test_grid_mismatch_is_refused():
    vol = volume_from_array(np.zeros((4, 8, 8)), (1.0, 1.0, 1.0))
    other = volume_from_array(np.zeros((4, 8, 9)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="grid"):
        measure(vol, labels_like(other, np.zeros((4, 8, 9))))


def test_brain_geometry_on_odd_sized_sub_millimetre_grids() -> None:
    """A resampled tilted series can have odd in-plane sizes (e.g. 611 rows at 0.49 mm)."""
    import numpy as np

    from dicomnode.brain import brain_mask, depth_mm

    hu = np.full((3, 61, 51), 30.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[:, 10:50, 10:40] = True
    d = depth_mm(mask, (5.0, 0.49, 0.49))
    assert d.shape == mask.shape and d[1, 30, 25] > 4.0 and d[0, 0, 0] == 0
    assert brain_mask(hu, (5.0, 0.49, 0.49)).shape == hu.shape


def test_image_brain_mask_is_computed_once_per_image() -> None:
    """Segmentation and measurement share one mask per series; a new image gets its own."""
    import gc

    import SimpleITK as sitk

    from dicomnode import brain as anatomy

    hu = np.full((6, 40, 40), -1000.0, np.float32)
    hu[:, 5:35, 5:35] = 1000.0  # skull
    hu[:, 8:32, 8:32] = 30.0  # brain
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((2.0, 2.0, 5.0))
    first = anatomy.image_brain_mask(image)
    assert first is anatomy.image_brain_mask(image)  # cached
    assert not first.flags.writeable
    np.testing.assert_array_equal(first, anatomy.brain_mask(hu, (5.0, 2.0, 2.0)))
    assert first[3, 20, 20] and not first[3, 2, 2]

    other = sitk.GetImageFromArray(np.full_like(hu, -1000.0))
    other.SetSpacing((2.0, 2.0, 5.0))
    assert not anatomy.image_brain_mask(other).any()  # not the first image's mask
    n = len(anatomy._MASKS)
    del image
    gc.collect()
    assert len(anatomy._MASKS) == n - 1  # the entry went with its image
