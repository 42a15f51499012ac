"""What ``status`` records about a series' geometry, from the per-instance headers.

Order, spacing, unevenness and tilt come from :mod:`dicomnode.geometry.stack`, the definition
the loader uses too, so a series called uneven here is the series the loader resamples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dicomnode.geometry.stack import (
    ORIENTATION_TOLERANCE,
    PIXEL_SPACING_TOLERANCE_MM,
    GeometryError,
    assess_stack,
    axes,
)


def _mixed_reconstructions(instances: list[dict[str, Any]]) -> list[str]:
    """What differs between instances that one reconstruction would share (matrix, spacing)."""
    matrices = {tuple(g["matrix"]) for g in instances if g.get("matrix")}
    spacings = [tuple(g["pixel_spacing_mm"]) for g in instances if g.get("pixel_spacing_mm")]
    out = []
    if len(matrices) > 1:
        out.append(f"{len(matrices)} matrix sizes")
    if spacings and not np.allclose(spacings, spacings[0], atol=PIXEL_SPACING_TOLERANCE_MM):
        out.append("different pixel spacings")
    return out


def _frames(instances: list[dict[str, Any]]) -> list[tuple[list[float] | None, list[float] | None]]:
    """One (position, orientation) per frame; a single-frame instance is one frame."""
    out: list[tuple[list[float] | None, list[float] | None]] = []
    for g in instances:
        frames = g.get("frames")
        if frames:
            out.extend((f.get("ipp"), f.get("iop")) for f in frames)
        else:
            out.append((g.get("ipp"), g.get("iop")))
    return out


def series_geometry(instances: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise the geometry of a series (JSON-serialisable dict).

    Keys: ``n_frames``, ``missing_geometry``, ``orientation_consistent``, ``iop``, ``normal``,
    ``spacing_mm`` (min/median/mean/max), ``largest_gap_mm``, ``uneven_spacing``, ``tilt_deg``,
    ``duplicate_positions``, ``extent_mm``, ``axial_angle_deg`` (normal vs patient z), and
    ``mixed`` (what shows two reconstructions under one Series Instance UID) when present.
    """
    frames = _frames(instances)
    acquisitions = {g.get("acquisition_number") for g in instances} - {None}
    usable = [(np.asarray(p, float), np.asarray(o, float)) for p, o in frames
              if p is not None and o is not None]
    out: dict[str, Any] = {"n_frames": len(frames), "missing_geometry": len(frames) - len(usable),
                           "acquisitions": len(acquisitions)}
    mixed = _mixed_reconstructions(instances)
    if mixed:
        out["mixed"] = mixed
    if not usable:
        out["orientation_consistent"] = False
        return out
    iop0 = usable[0][1]
    consistent = all(np.allclose(o, iop0, atol=ORIENTATION_TOLERANCE) for _, o in usable)
    try:
        direction = axes(iop0)
    except GeometryError:
        out["orientation_consistent"] = False
        return out
    normal = direction[:, 2]
    stack = assess_stack(np.array([p for p, _ in usable]), direction)
    out.update({
        "orientation_consistent": bool(consistent),
        "iop": [round(float(v), 6) for v in iop0],
        "normal": [round(float(v), 6) for v in normal],
        "axial_angle_deg": round(math.degrees(math.acos(min(1.0, abs(float(normal[2]))))), 2),
        "extent_mm": round(stack.extent_mm, 3),
        "duplicate_positions": stack.duplicates,
        "uneven_spacing": stack.uneven,
        "tilt_deg": round(stack.tilt_deg, 3),
        "tilted": stack.tilted,
    })
    gaps = stack.gaps_mm
    if gaps.size:
        out["spacing_mm"] = {"min": round(float(gaps.min()), 4),
                             "median": round(float(np.median(gaps)), 4),
                             "mean": round(float(gaps.mean()), 4),
                             "max": round(float(gaps.max()), 4)}
        out["largest_gap_mm"] = round(float(gaps.max()), 4)
    return out
