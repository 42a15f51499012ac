"""Building blocks of the resampler and of the way back to the source planes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.geometry.source_grid import to_source_grid
from dicomnode.load.resample import shift_plane
from dicomnode.load.volume import load_series
from tests.ct_series import stack, write, z_positions


def _reference_shift(
    src: np.ndarray, dr: float, dc: float, shape: tuple[int, int], fill: float
) -> np.ndarray:
    """Straightforward bilinear sampling at (row + dr, column + dc), edge pixels' half-pixel kept."""
    def axis(n_out: int, shift: float, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.arange(n_out) + shift
        valid = (x >= -0.5 - 1e-6) & (x <= n_src - 0.5 + 1e-6)
        xc = np.clip(x, 0, n_src - 1)
        i0 = np.minimum(np.floor(xc).astype(int), n_src - 2)
        return i0, xc - i0, valid

    ci, cw, cv = axis(shape[1], dc, src.shape[1])
    ri, rw, rv = axis(shape[0], dr, src.shape[0])
    tmp = src[:, ci] * (1 - cw) + src[:, ci + 1] * cw
    out = tmp[ri] * (1 - rw)[:, None] + tmp[ri + 1] * rw[:, None]
    out[~rv] = fill
    out[:, ~cv] = fill
    return out


def test_shift_plane_matches_plain_bilinear_sampling() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(12, 9)).astype(np.float32)
    shifts = [*rng.uniform(-14, 8, 60), 0.0, -3.0, -3.5, -0.5, 0.5, 5.999999999, -2.0000001, -12.5, 11.5]
    for dr in shifts:
        for dc in (0.0, -1.25, 0.5, -0.5, 3.0, -9.5, 8.5):
            for shape in ((12, 9), (20, 15), (5, 4)):
                got = shift_plane(src, dr, dc, shape, -99.0)
                assert got.shape == shape and got.dtype == np.float32
                np.testing.assert_allclose(got, _reference_shift(src, dr, dc, shape, -99.0), atol=1e-5)
    assert shift_plane(src, 0.0, 0.0, (12, 9), -99.0) is src  # no work when nothing moves


def test_to_source_grid_from_any_label_grid(tmp_path: Path) -> None:
    """Labels on a permuted / flipped grid (same physical voxels) come back exactly."""
    vol = load_series(write(stack(z_positions(5, 2.0)), tmp_path))
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, size=(5, 12, 16)).astype(np.uint8)
    lab = sitk.GetImageFromArray(truth)
    lab.CopyInformation(vol.image)
    assert np.array_equal(to_source_grid(lab, vol), truth)
    for other in (sitk.PermuteAxes(lab, [1, 0, 2]), sitk.Flip(lab, [True, False, True]),
                  sitk.PermuteAxes(lab, [2, 0, 1])):
        assert np.array_equal(to_source_grid(other, vol), truth)
    # a grid that covers only part of the stack: the rest is background
    part = lab[:, :, 1:3]
    back = to_source_grid(part, vol)
    assert np.array_equal(back[1:3], truth[1:3]) and not back[[0, 3, 4]].any()
    with pytest.raises(TypeError):
        to_source_grid(truth, vol)  # type: ignore[arg-type]
