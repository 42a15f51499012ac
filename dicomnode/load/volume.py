"""Stored instances of one CT series -> a CTVolume in HU with exact geometry.

Inputs: paths of the stored instances (single-frame CT Image, Enhanced CT or Legacy Converted
Enhanced CT) of one series. Outputs: :class:`~dicomnode.domain.CTVolume`. Side effects: reads
the files; logs (series UID, counts, warnings; never patient names or IDs above DEBUG).

Steps (docs/loading.md): read headers (pixel data deferred); check one series, one frame of
reference, one orientation, one matrix and pixel spacing; sort along the slice normal; drop
exact duplicates; plan the output grid (spacing from Image Position (Patient), never Slice
Thickness); decode and rescale every plane to HU; resample tilted or unevenly spaced stacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dicomnode.domain import CTVolume, SourceSlice
from dicomnode.errors import VolumeError

from .frames import Frame, header_summary, read_instance
from .output_grid import (
    SAME_POSITION_MM,
    Grid,
    axes,
    check_consistent,
    large_gaps,
    plan_grid,
    sort_frames,
)
from .pixels import decode_frames, decode_one, iter_planes
from .resample import resample_stack

__all__ = ["load_series"]

log = logging.getLogger(__name__)

DEFAULT_FILL_HU = -1024.0  # resampled voxels outside every source plane (air)


def load_series(
    paths: Sequence[Path],
    *,
    target_spacing_mm: float | None = None,
    fill_hu: float = DEFAULT_FILL_HU,
    workers: int | None = None,
) -> CTVolume:
    """Load the stored instances of one CT series as a float32 volume in HU.

    Parameters
    ----------
    paths : sequence of Path
        Files of one series, any order.
    target_spacing_mm : float, optional
        Slice spacing of the output along the normal. Default: the source's own spacing when it
        is regular, else the median gap between source planes. Giving it always resamples
        unless it equals the source's regular spacing.
    fill_hu : float
        Value of resampled voxels that no source plane covers.
    workers : int, optional
        Decoding threads (default: up to 8, one per CPU).

    Returns
    -------
    CTVolume
        ``resampled`` is True when the grid differs from the source planes (tilt, uneven
        spacing, target spacing); ``slices`` lists the source planes in the order of the stack.

    Raises
    ------
    VolumeError
        Files unreadable or not CT, no pixel data, several series or frames of reference, mixed
        orientation, matrix or pixel spacing, two different images at one position, fewer than
        two planes, or pixel data that cannot be decoded.
    """
    t0 = time.perf_counter()
    datasets, frames = _read_headers(paths)
    check_consistent(frames)
    series_uid = frames[0].series_instance_uid
    extra = {"series_uid": series_uid}
    warn = _Warnings(extra)
    frames, grid = _plan_stack(frames, datasets, warn, target_spacing_mm=target_spacing_mm)
    image = _fill_image(datasets, frames, grid, fill_hu=fill_hu, workers=workers, extra=extra)
    volume = CTVolume(
        series_instance_uid=series_uid,
        study_instance_uid=frames[0].study_instance_uid,
        image=image,
        slices=_source_slices(frames),
        orientation=tuple(float(v) for v in frames[0].orientation),  # type: ignore[arg-type]
        pixel_spacing_mm=frames[0].pixel_spacing_mm,
        rows=frames[0].rows,
        columns=frames[0].columns,
        resampled=grid.resampled,
        warnings=tuple(warn.messages),
        header=_header(datasets[frames[0].path], frames, grid),
    )
    log.info(
        "loaded %d planes -> %s voxels of %s mm%s in %.2f s",
        len(frames), "x".join(map(str, grid.size)), "x".join(f"{s:.3g}" for s in grid.spacing),
        " (resampled)" if grid.resampled else "", time.perf_counter() - t0, extra=extra,
    )
    return volume


@dataclass(frozen=True)
class _Warnings:
    """Collects the warnings of one load (for ``CTVolume.warnings``) and logs each once."""

    extra: dict[str, str]
    messages: list[str] = field(default_factory=list)

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        log.warning("%s", message, extra=self.extra)


def _read_headers(paths: Sequence[Path]) -> tuple[dict[Path, Dataset], list[Frame]]:
    """Headers of every distinct file (pixel data deferred) and the frames they hold."""
    if not paths:
        raise VolumeError("no instances to load")
    datasets: dict[Path, Dataset] = {}
    frames: list[Frame] = []
    for p in paths:
        path = Path(p)
        if path in datasets:
            continue
        ds, fs = read_instance(path)
        datasets[path] = ds
        frames.extend(fs)
    return datasets, frames


def _plan_stack(
    frames: list[Frame],
    datasets: dict[Path, Dataset],
    warn: Callable[[str], None],
    *,
    target_spacing_mm: float | None,
) -> tuple[list[Frame], Grid]:
    """Sort and de-duplicate consistent frames, plan the output grid, warn about the stack."""
    direction = axes(frames[0].orientation)
    frames = sort_frames(frames, direction[:, 2])
    frames = _drop_duplicates(frames, datasets, warn)
    grid = plan_grid(frames, direction, target_spacing_mm=target_spacing_mm)
    for message in large_gaps(frames, direction):
        warn(message)
    missing = sum(f.rescale_missing for f in frames)
    if missing:
        warn(f"Rescale Slope/Intercept missing in {missing} of {len(frames)} planes; used 1 and 0")
    return frames, grid


def _fill_image(
    datasets: dict[Path, Dataset],
    frames: list[Frame],
    grid: Grid,
    *,
    fill_hu: float,
    workers: int | None,
    extra: dict[str, str],
) -> sitk.Image:
    """Decode (and resample where the grid says so) every plane into a SimpleITK image in HU."""
    view = np.zeros(tuple(int(s) for s in grid.size[::-1]), np.float32)  # (z, y, x)
    if grid.resampled:
        resample_stack(iter_planes(datasets, frames, workers=workers), grid, view, fill_hu=fill_hu)
        log.info("series resampled: %s", "; ".join(grid.reasons), extra=extra)
    else:
        decode_frames(datasets, frames, view.__getitem__, workers=workers)
    # One copy into SimpleITK's own buffer; writing into that buffer directly would rely on
    # undocumented memory ownership.
    image = sitk.GetImageFromArray(view)
    del view
    image.SetOrigin([float(v) for v in grid.origin])
    image.SetSpacing([float(v) for v in grid.spacing])
    image.SetDirection([float(v) for v in grid.direction.ravel()])
    return image


def _header(first_ds: Dataset, frames: Sequence[Frame], grid: Grid) -> dict[str, Any]:
    """``header_summary`` of the first plane plus what the stack itself says."""
    header = header_summary(first_ds)
    header["n_source_planes"] = len(frames)
    gaps = np.diff(grid.source_uvw[:, 2])
    header["source_gap_mm"] = (round(float(gaps.min()), 4), round(float(gaps.max()), 4))
    header["resample_reasons"] = grid.reasons
    return header


def _source_slices(frames: Sequence[Frame]) -> tuple[SourceSlice, ...]:
    """The source planes in the order of the stack (frame numbers are 1-based)."""
    return tuple(
        SourceSlice(
            sop_instance_uid=f.sop_instance_uid,
            sop_class_uid=f.sop_class_uid,
            position_mm=(float(f.position[0]), float(f.position[1]), float(f.position[2])),
            frame_number=None if f.index is None else f.index + 1,
        )
        for f in frames
    )


def _drop_duplicates(
    frames: list[Frame], datasets: dict[Path, Dataset], warn: Callable[[str], None]
) -> list[Frame]:
    """Drop repeated planes: same SOP Instance UID (and frame), or same position and pixels.

    ``frames`` are sorted along the normal; the first of equal planes (by SOP Instance UID) is
    kept, so the result does not depend on the order of the files.
    """
    seen: dict[tuple[str, int], Frame] = {}
    unique: list[Frame] = []
    dropped_uid = 0
    for f in frames:
        if f.key in seen:
            dropped_uid += 1
            continue
        seen[f.key] = f
        unique.append(f)
    kept: list[Frame] = []
    dropped_pixels = 0
    for f in unique:
        prev = kept[-1] if kept else None
        if prev is not None and float(np.linalg.norm(f.position - prev.position)) < SAME_POSITION_MM:
            if np.array_equal(decode_one(datasets[prev.path], prev), decode_one(datasets[f.path], f)):
                dropped_pixels += 1
                continue
            raise VolumeError(
                f"two different images at the same position {_pos(f)}: {prev.path.name} and {f.path.name}"
            )
        kept.append(f)
    if dropped_uid:
        warn(f"dropped {dropped_uid} duplicate plane(s) with a repeated SOP Instance UID")
    if dropped_pixels:
        warn(f"dropped {dropped_pixels} duplicate plane(s) at the same position with identical pixels")
    return kept


def _pos(f: Frame) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in f.position) + ")"
