"""Geometry shared by stages: labels on a volume's grid, back on the source image planes.

Used by encoders (SEG frames and overlays go on the source instances' grid) and by tests; it
depends only on the domain types, so no stage imports another for it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dicomnode.domain import CTVolume


def to_source_grid(labels: sitk.Image, volume: CTVolume) -> np.ndarray:
    """Labels on ``volume.image``'s grid, back on each source plane (nearest neighbour).

    Pixel (r, c) of source plane i is at ``IPP_i + c * column_spacing * row_cosine +
    r * row_spacing * column_cosine`` (PS3.3 C.7.6.2.1.1); it takes the label of the voxel of
    ``labels`` whose centre is nearest (0 outside). Any label grid works; on the volume's own
    grid of an unresampled series the result is the label array itself.

    Returns
    -------
    numpy.ndarray
        uint8, shape (n_slices, rows, columns), in the order of ``volume.slices``.
    """
    if not isinstance(labels, sitk.Image) or labels.GetDimension() != 3:
        raise TypeError("labels must be a 3-D SimpleITK image")
    if labels.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("labels must have one component per pixel")
    lab = sitk.GetArrayViewFromImage(labels)  # (z, y, x), no copy
    n, rows, cols = len(volume.slices), volume.rows, volume.columns
    out = np.zeros((n, rows, cols), dtype=np.uint8)
    if not volume.resampled and _same_grid(labels, volume.image) and lab.shape == out.shape:
        out[...] = lab
        return out
    direction = np.array(labels.GetDirection(), dtype=np.float64).reshape(3, 3)
    to_index = np.linalg.inv(direction @ np.diag(labels.GetSpacing()))
    origin = np.array(labels.GetOrigin(), dtype=np.float64)
    ori = np.asarray(volume.orientation, dtype=np.float64)
    row_mm, col_mm = volume.pixel_spacing_mm
    step_c = to_index @ (ori[:3] * col_mm)  # index change per source column
    step_r = to_index @ (ori[3:] * row_mm)  # per source row
    size = np.array(lab.shape[::-1])  # (nx, ny, nz)
    separable = (abs(step_c[1]) < 1e-6 and abs(step_c[2]) < 1e-6
                 and abs(step_r[0]) < 1e-6 and abs(step_r[2]) < 1e-6)
    c = np.arange(cols, dtype=np.float64)
    r = np.arange(rows, dtype=np.float64)
    for i, s in enumerate(volume.slices):
        base = to_index @ (np.asarray(s.position_mm, dtype=np.float64) - origin)
        if separable:
            iz = int(np.rint(base[2]))
            if not 0 <= iz < size[2]:
                continue
            ix = np.rint(base[0] + c * step_c[0]).astype(np.intp)
            iy = np.rint(base[1] + r * step_r[1]).astype(np.intp)
            okx, oky = (ix >= 0) & (ix < size[0]), (iy >= 0) & (iy < size[1])
            out[i][np.ix_(oky, okx)] = lab[iz][np.ix_(iy[oky], ix[okx])]
        else:
            idx = base[:, None, None] + step_c[:, None, None] * c[None, None, :] \
                + step_r[:, None, None] * r[None, :, None]
            idx = np.rint(idx).astype(np.intp)
            ok = np.all((idx >= 0) & (idx < size[:, None, None]), axis=0)
            out[i][ok] = lab[idx[2][ok], idx[1][ok], idx[0][ok]]
    return out


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))
