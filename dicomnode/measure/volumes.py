"""Label volumes (voxel count x voxel volume) and the ABC/2 estimate (Kothari et al., 1996).

Inputs: boolean masks (z, y, x) and the voxel spacing (z, y, x) in mm.
Outputs: volumes in mL and an :class:`ABC2` record. Side effects: none.
See docs/measurements.md for the definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicomnode.geometry.planar import feret

MM3_PER_ML = 1000.0


def voxel_ml(spacing_zyx_mm: tuple[float, float, float]) -> float:
    """Volume of one voxel in mL."""
    return float(np.prod(spacing_zyx_mm)) / MM3_PER_ML


def volume_ml(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> float:
    """Number of voxels in ``mask`` x voxel volume, in mL (0.0 for an empty mask)."""
    return float(np.count_nonzero(mask)) * voxel_ml(spacing_zyx_mm)


@dataclass(frozen=True)
class ABC2:
    """ABC/2 from the axial slice with the largest area (all lengths in mm)."""

    volume_ml: float
    a_mm: float  # largest diameter (max Feret) on the largest-area slice
    b_mm: float  # largest extent perpendicular to A on that slice
    c_mm: float  # slices holding the lesion x slice spacing
    slice_index: int | None  # z index of the largest-area slice
    largest_area_mm2: float
    n_slices: int


NO_ABC2 = ABC2(0.0, 0.0, 0.0, 0.0, None, 0.0, 0)


def feret_a_b(sl: np.ndarray, sy: float, sx: float) -> tuple[float, float]:
    """(A, B) in mm of one 2-D mask, taking each pixel as a filled square.

    A is the maximum Feret (caliper) diameter; B is the caliper width of the mask measured
    perpendicular to A (:func:`dicomnode.geometry.planar.feret`, which also gives the lines).
    """
    f = feret(sl, sy, sx)
    return f.a_mm, f.b_mm


def abc2(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> ABC2:
    """ABC/2 in mL: A x B x C / 2 (mm^3 -> mL), axial = the z axis of the grid.

    The largest-area slice is the z index with the most lesion pixels (the lowest index on a
    tie); C counts every slice that holds any lesion pixel.
    """
    area = mask.sum(axis=(1, 2))
    if not area.any():
        return NO_ABC2
    sz, sy, sx = spacing_zyx_mm
    k = int(np.argmax(area))
    a, b = feret_a_b(mask[k], sy, sx)
    n = int(np.count_nonzero(area))
    c = n * sz
    return ABC2(
        volume_ml=a * b * c / 2.0 / MM3_PER_ML,
        a_mm=a,
        b_mm=b,
        c_mm=c,
        slice_index=k,
        largest_area_mm2=float(area[k]) * sy * sx,
        n_slices=n,
    )
