"""Geometry of a stack of source planes: consistency, order along the normal, output grid.

Inputs: :class:`~dicomnode.load.frames.Frame` records. Outputs: sorted frames and a
:class:`Grid` (the regular output grid and how each source plane sits in it). No I/O.

Conventions (PS3.3 C.7.6.2.1.1): pixel (r, c) of a plane is at
``IPP + c * column_spacing * row_cosine + r * row_spacing * column_cosine``; the slice normal is
``row_cosine x column_cosine``. Slice spacing comes from the positions projected on the normal,
never from Slice Thickness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicomnode.errors import VolumeError
from dicomnode.geometry import stack as stack_geometry
from dicomnode.geometry.stack import (
    ORIENTATION_TOLERANCE,
    PIXEL_SPACING_TOLERANCE_MM,
    SAME_POSITION_MM,
    GeometryError,
    assess_stack,
)

from .frames import Frame


def check_consistent(frames: Sequence[Frame]) -> None:
    """Raise VolumeError unless all frames share series, frame of reference, orientation, matrix."""
    first = frames[0]
    series = sorted({f.series_instance_uid for f in frames})
    if len(series) > 1:
        raise VolumeError(f"instances from {len(series)} series: {', '.join(series)}")
    for_uids = sorted({f.frame_of_reference_uid for f in frames if f.frame_of_reference_uid})
    if len(for_uids) > 1:
        raise VolumeError(f"instances in {len(for_uids)} frames of reference")
    for f in frames[1:]:
        if (f.rows, f.columns) != (first.rows, first.columns):
            raise VolumeError(
                f"mixed matrix: {first.rows}x{first.columns} and {f.rows}x{f.columns} ({f.path.name})"
            )
        if not np.allclose(f.pixel_spacing_mm, first.pixel_spacing_mm, atol=PIXEL_SPACING_TOLERANCE_MM):
            raise VolumeError(
                f"mixed pixel spacing: {first.pixel_spacing_mm} and {f.pixel_spacing_mm} mm ({f.path.name})"
            )
        if not np.allclose(f.orientation, first.orientation, atol=ORIENTATION_TOLERANCE):
            raise VolumeError(
                f"mixed orientation: {_fmt(first.orientation)} and {_fmt(f.orientation)} ({f.path.name})"
            )


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def axes(orientation: Sequence[float]) -> np.ndarray:
    """Orthonormal (row, column, normal) directions (:func:`dicomnode.geometry.stack.axes`)."""
    try:
        return stack_geometry.axes(orientation)
    except GeometryError as exc:
        raise VolumeError(str(exc)) from exc


def sort_frames(frames: Sequence[Frame], normal: np.ndarray) -> list[Frame]:
    """Frames in increasing distance along the normal (ties by SOP Instance UID, frame)."""
    return sorted(frames, key=lambda f: (float(f.position @ normal), f.sop_instance_uid, f.key[1]))


@dataclass(frozen=True)
class Grid:
    """The output grid and where each (sorted) source plane lies in it.

    Coordinates ``u, v, w`` are along the orthonormal row, column and normal axes (mm).
    """

    direction: np.ndarray  # 3x3, columns: row, column, normal
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0)
    spacing: tuple[float, float, float]  # (x: column spacing, y: row spacing, z)
    size: tuple[int, int, int]  # (nx, ny, nz)
    resampled: bool
    source_uvw: np.ndarray  # (n, 3): u, v, w of each source plane's IPP
    reasons: tuple[str, ...]  # why it was resampled (empty when not)

    @property
    def z_mm(self) -> np.ndarray:
        """The w coordinate of each output plane."""
        return self.origin @ self.direction[:, 2] + np.arange(self.size[2]) * self.spacing[2]


def plan_grid(
    frames: Sequence[Frame], direction: np.ndarray, *, target_spacing_mm: float | None = None
) -> Grid:
    """The regular output grid for sorted, de-duplicated frames (at least two).

    Not resampled when the positions lie along the normal (no in-plane drift above
    ``geometry.stack.IN_PLANE_TOLERANCE_MM``) and are evenly spaced (every gap and every position
    against the regular fit within ``geometry.stack.regularity_tolerance_mm``) and no target
    spacing is asked for: the
    grid is then the source grid, origin at the first IPP, z spacing the mean gap.

    Otherwise the grid has the source's in-plane axes and the normal as third axis, covers every
    source plane (the union of their in-plane extents; the first and last planes lie exactly on
    the first and last output planes), in-plane spacing as the source, and z spacing the target
    (default: the median gap) adjusted so that a whole number of steps spans the stack.
    """
    if len(frames) < 2:
        raise VolumeError(f"{len(frames)} slice(s); a volume needs at least 2")
    first = frames[0]
    row_mm, col_mm = first.pixel_spacing_mm  # (row spacing, column spacing)
    uvw = np.array([f.position for f in frames]) @ direction  # (n, 3)
    w = uvw[:, 2]
    gaps = np.diff(w)
    if np.any(gaps < SAME_POSITION_MM):
        k = int(np.argmin(gaps))
        raise VolumeError(
            f"two different planes at the same distance along the normal ({w[k]:.3f} mm): "
            f"{frames[k].path.name} and {frames[k + 1].path.name}"
        )
    stack = assess_stack(np.array([f.position for f in frames]), direction)
    median_gap = stack.median_gap_mm
    extent = stack.extent_mm
    reasons = []
    if stack.tilted:
        reasons.append(f"positions not along the normal (gantry tilt about {stack.tilt_deg:.1f} deg)")
    if stack.uneven:
        reasons.append(f"uneven spacing ({gaps.min():.3g} to {gaps.max():.3g} mm)")
    if target_spacing_mm is not None:
        if not target_spacing_mm > 0:
            raise ValueError(f"target_spacing_mm must be positive, got {target_spacing_mm}")
        if abs(target_spacing_mm - extent / (len(w) - 1)) > 1e-6 or reasons:
            reasons.append(f"target spacing {target_spacing_mm:g} mm")
    if not reasons:
        return Grid(direction=direction, origin=first.position.copy(),
                    spacing=(col_mm, row_mm, extent / (len(w) - 1)),
                    size=(first.columns, first.rows, len(frames)), resampled=False,
                    source_uvw=uvw, reasons=())
    step = target_spacing_mm if target_spacing_mm is not None else median_gap
    nz = max(2, int(round(extent / step)) + 1)
    u0, v0 = float(uvw[:, 0].min()), float(uvw[:, 1].min())
    nx = first.columns + int(np.ceil((uvw[:, 0].max() - u0) / col_mm - 1e-3))
    ny = first.rows + int(np.ceil((uvw[:, 1].max() - v0) / row_mm - 1e-3))
    origin = direction @ np.array([u0, v0, w[0]])
    return Grid(direction=direction, origin=origin, spacing=(col_mm, row_mm, extent / (nz - 1)),
                size=(nx, ny, nz), resampled=True, source_uvw=uvw, reasons=tuple(reasons))


def large_gaps(frames: Sequence[Frame], direction: np.ndarray, factor: float = 1.9) -> list[str]:
    """Warnings for gaps much larger than the median (missing slices?)."""
    w = np.array([f.position for f in frames]) @ direction[:, 2]
    gaps = np.diff(w)
    median = float(np.median(gaps))
    return [
        f"gap of {g:.2f} mm between {frames[k].path.name} and {frames[k + 1].path.name} "
        f"(median {median:.2f} mm): missing slices?"
        for k, g in enumerate(gaps) if g > factor * median
    ]
