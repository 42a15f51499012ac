"""Slice geometry of a series from per-instance headers: order, spacing, gaps, tilt.

Positions are projected on the slice normal (row x column direction cosines, PS3.3 C.7.6.2.1.1);
spacing comes from Image Position (Patient), never from Slice Thickness. Gantry tilt is the angle
between the normal and the line through the first and last slice positions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_ORIENTATION_TOLERANCE = 1e-3
_UNEVEN_TOLERANCE_MM = 0.05
_PIXEL_SPACING_TOLERANCE_MM = 1e-3


def _mixed_reconstructions(instances: list[dict[str, Any]]) -> list[str]:
    """What differs between instances that one reconstruction would share (matrix, spacing)."""
    matrices = {tuple(g["matrix"]) for g in instances if g.get("matrix")}
    spacings = [tuple(g["pixel_spacing_mm"]) for g in instances if g.get("pixel_spacing_mm")]
    out = []
    if len(matrices) > 1:
        out.append(f"{len(matrices)} matrix sizes")
    if spacings and not np.allclose(spacings, spacings[0], atol=_PIXEL_SPACING_TOLERANCE_MM):
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
    usable = [(np.asarray(p, float), np.asarray(o, float)) for p, o in frames
              if p is not None and o is not None]
    out: dict[str, Any] = {"n_frames": len(frames), "missing_geometry": len(frames) - len(usable)}
    mixed = _mixed_reconstructions(instances)
    if mixed:
        out["mixed"] = mixed
    if not usable:
        out["orientation_consistent"] = False
        return out
    iop0 = usable[0][1]
    consistent = all(np.allclose(o, iop0, atol=_ORIENTATION_TOLERANCE) for _, o in usable)
    normal = np.cross(iop0[:3], iop0[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        out["orientation_consistent"] = False
        return out
    normal /= norm
    positions = np.array([p for p, _ in usable])
    distances = np.sort(positions @ normal)
    gaps = np.diff(distances)
    out.update({
        "orientation_consistent": bool(consistent),
        "iop": [round(float(v), 6) for v in iop0],
        "normal": [round(float(v), 6) for v in normal],
        "axial_angle_deg": round(math.degrees(math.acos(min(1.0, abs(float(normal[2]))))), 2),
        "extent_mm": round(float(distances[-1] - distances[0]), 3),
        "duplicate_positions": int(np.sum(gaps < 1e-3)) if gaps.size else 0,
    })
    real_gaps = gaps[gaps >= 1e-3]
    if real_gaps.size:
        out["spacing_mm"] = {"min": round(float(real_gaps.min()), 4),
                             "median": round(float(np.median(real_gaps)), 4),
                             "mean": round(float(real_gaps.mean()), 4),
                             "max": round(float(real_gaps.max()), 4)}
        out["largest_gap_mm"] = round(float(real_gaps.max()), 4)
        out["uneven_spacing"] = bool(real_gaps.max() - real_gaps.min() > _UNEVEN_TOLERANCE_MM)
    else:
        out["uneven_spacing"] = False
    order = np.argsort(positions @ normal)
    stack = positions[order[-1]] - positions[order[0]]
    length = float(np.linalg.norm(stack))
    if length > 1e-6:
        cos_tilt = min(1.0, abs(float(stack @ normal)) / length)
        out["tilt_deg"] = round(math.degrees(math.acos(cos_tilt)), 3)
    else:
        out["tilt_deg"] = 0.0
    return out
