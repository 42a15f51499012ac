"""Geometry of a stack of image planes: order along the normal, spacing, unevenness, tilt.

The one definition used by assemble (what ``status`` records about a series) and by load (what
it resamples), with one set of tolerances, so the two can never disagree about a series.

Conventions (PS3.3 C.7.6.2.1.1): the slice normal is ``row_cosine x column_cosine``; positions
are Image Position (Patient) projected on the in-plane axes and the normal (``u, v, w``).
Slice spacing comes from the positions, never from Slice Thickness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
PIXEL_SPACING_TOLERANCE_MM = 1e-3
SAME_POSITION_MM = 1e-3  # two planes closer than this along the normal are at one position
UNEVEN_TOLERANCE_MM = 0.05  # absolute part of the regularity tolerance
UNEVEN_TOLERANCE_FRACTION = 0.01  # relative part (of the median gap)
IN_PLANE_TOLERANCE_MM = 0.05  # in-plane drift of positions above this is a tilt (shear)


class GeometryError(ValueError):
    """Direction cosines that do not describe a plane."""


def axes(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Orthonormal (row, column, normal) directions as the columns of a 3x3 matrix.

    The column cosine is made orthogonal to the row cosine (Gram-Schmidt): the values stored in
    a header are rounded, and an output grid must be exactly orthogonal.

    Raises
    ------
    GeometryError
        When the six values are not two orthogonal unit vectors (within 1 %).
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 0.01 or abs(nc - 1) > 0.01 or abs(float(row @ col)) > 0.01:
        shown = "[" + ", ".join(f"{v:.4g}" for v in orientation) + "]"
        raise GeometryError(f"Image Orientation (Patient) {shown} is not two orthogonal unit vectors")
    row /= nr
    col = col - (col @ row) * row
    col /= np.linalg.norm(col)
    return np.column_stack([row, col, np.cross(row, col)])


def regularity_tolerance_mm(median_gap_mm: float) -> float:
    """Gaps (and positions against a regular fit) may deviate by this much: 0.05 mm or 1 %."""
    return max(UNEVEN_TOLERANCE_MM, UNEVEN_TOLERANCE_FRACTION * median_gap_mm)


@dataclass(frozen=True)
class Stack:
    """Where a stack's planes lie, in the order of increasing distance along the normal."""

    order: np.ndarray  # indices of the input positions, sorted along the normal
    uvw_mm: np.ndarray  # (n, 3) sorted positions on the (row, column, normal) axes
    duplicates: int  # planes at the position of the previous one
    gaps_mm: np.ndarray  # gaps between successive distinct positions
    uneven: bool  # a gap, or a position against the regular fit, off by more than the tolerance
    tilted: bool  # positions drift in-plane by more than IN_PLANE_TOLERANCE_MM
    tilt_deg: float  # angle between the normal and the line through the first and last plane
    extent_mm: float  # first to last distance along the normal

    @property
    def median_gap_mm(self) -> float:
        return float(np.median(self.gaps_mm)) if self.gaps_mm.size else 0.0


def assess_stack(positions_mm: np.ndarray, direction: np.ndarray) -> Stack:
    """Order, spacing, unevenness and tilt of planes at ``positions_mm`` (n, 3; LPS).

    ``direction`` comes from :func:`axes`. Planes at one position (duplicates) count once for
    the gaps. A stack is uneven when any gap deviates from the median gap, or any position from
    a regular spacing between the first and the last, by more than
    :func:`regularity_tolerance_mm`; it is tilted when the positions drift in-plane by more than
    ``IN_PLANE_TOLERANCE_MM`` (gantry tilt or shear).
    """
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    uvw_all = positions @ direction
    order = np.argsort(uvw_all[:, 2], kind="stable")
    uvw = uvw_all[order]
    w = uvw[:, 2]
    steps = np.diff(w)
    keep = np.concatenate([[True], steps >= SAME_POSITION_MM]) if w.size else np.zeros(0, bool)
    distinct = w[keep]
    gaps = np.diff(distinct)
    extent = float(distinct[-1] - distinct[0]) if distinct.size else 0.0
    uneven = False
    if gaps.size:
        median = float(np.median(gaps))
        tol = regularity_tolerance_mm(median)
        regular = distinct[0] + np.arange(distinct.size) * (extent / (distinct.size - 1))
        uneven = bool(float(np.abs(gaps - median).max()) > tol
                      or float(np.abs(distinct - regular).max()) > tol)
    drift = np.hypot(uvw[:, 0] - uvw[0, 0], uvw[:, 1] - uvw[0, 1]) if w.size else np.zeros(0)
    line = uvw[-1] - uvw[0] if w.size else np.zeros(3)
    length = float(np.linalg.norm(line))
    tilt = math.degrees(math.acos(min(1.0, abs(float(line[2])) / length))) if length > 1e-6 else 0.0
    return Stack(order=order, uvw_mm=uvw, duplicates=int(np.sum(~keep)), gaps_mm=gaps,
                 uneven=uneven, tilted=bool(drift.size and float(drift.max()) > IN_PLANE_TOLERANCE_MM),
                 tilt_deg=tilt, extent_mm=extent)
