"""Density and shape markers of a haematoma (NCCT expansion markers, irregularity).

Inputs: the ICH mask and HU (z, y, x) and the spacing (z, y, x) in mm.
Outputs: a flat dict of numbers and booleans, units in the names. Side effects: none.
Definitions: docs/measurements.md ("Markers").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

HYPODENSE_DROP_HU = 15.0  # a core voxel is hypodense when > 15 HU below the core median
BLEND_DROP_HU = 18.0  # blend-sign-like: a hypodense region touching the border, >= 18 HU darker
MIN_REGION_FRACTION = 0.03  # hypodense regions smaller than 3 % of the ICH are ignored
MIN_REGION_VOXELS = 3

_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[1] = ndi.generate_binary_structure(2, 1)
_FULL = np.ones((3, 3, 3), dtype=bool)


def _crop(mask: np.ndarray, pad: int = 2) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def shape_markers(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> dict[str, Any]:
    """Surface area, sphericity, solidity, extent, components, elongation and flatness."""
    box = _crop(mask)
    m = mask[box]
    vox_mm3 = float(np.prod(spacing_zyx_mm))
    vol_mm3 = float(np.count_nonzero(m)) * vox_mm3
    # surface area: ITK's Crofton-formula estimate on the label (accounts for spacing)
    img = sitk.GetImageFromArray(m.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx_mm[::-1]))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputePerimeterOn()
    stats.Execute(img)
    area = float(stats.GetPerimeter(1))
    sphericity = float(np.pi ** (1 / 3) * (6 * vol_mm3) ** (2 / 3) / area) if area > 0 else 0.0
    hull_mm3 = convex_hull_mm3(m, spacing_zyx_mm)
    _, n = ndi.label(m, structure=_FULL)
    idx = np.argwhere(m)
    bbox = (idx.max(axis=0) - idx.min(axis=0) + 1).prod()
    return {
        "surface_area_mm2": area,
        "sphericity": min(1.0, sphericity),
        "solidity": min(1.0, vol_mm3 / hull_mm3) if hull_mm3 > 0 else 1.0,
        "convex_hull_volume_ml": hull_mm3 / 1000.0,
        "extent": float(len(idx) / bbox),
        "n_components": int(n),
        "n_satellites": int(max(n - 1, 0)),
        "elongation": float(stats.GetElongation(1)),
        "flatness": float(stats.GetFlatness(1)),
    }


def convex_hull_mm3(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float]) -> float:
    """Volume of the convex hull of the voxels taken as filled boxes (their corner points).

    Only the first and last voxel of every x row can carry hull vertices, so only their
    corners are passed to Qhull.
    """
    zz, yy = np.nonzero(mask.any(axis=2))
    rows = mask[zz, yy]
    first = rows.argmax(axis=1)
    last = mask.shape[2] - 1 - rows[:, ::-1].argmax(axis=1)
    k = np.concatenate([zz, zz]).astype(float)
    j = np.concatenate([yy, yy]).astype(float)
    i = np.concatenate([first, last]).astype(float)
    sz, sy, sx = spacing_zyx_mm
    pts = np.concatenate(
        [
            np.stack([(k + dk) * sz, (j + dj) * sy, (i + di) * sx], axis=1)
            for dk in (-0.5, 0.5)
            for dj in (-0.5, 0.5)
            for di in (-0.5, 0.5)
        ]
    )
    try:
        return float(ConvexHull(np.unique(pts, axis=0)).volume)
    except (QhullError, ValueError):
        return float(np.count_nonzero(mask)) * float(np.prod(spacing_zyx_mm))


def density_markers(
    mask: np.ndarray, hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float]
) -> dict[str, Any]:
    """HU statistics, hypodense fraction and the blend-sign-like heuristic."""
    box = _crop(mask)
    m, h = mask[box], hu[box].astype(np.float32)
    values = h[m]
    mean, sd = float(values.mean()), float(values.std())
    # core: the ICH without its in-plane border pixels (partial volume with brain)
    core = ndi.binary_erosion(m, structure=_INPLANE)
    if np.count_nonzero(core) < MIN_REGION_VOXELS:
        core = m
    core_median = float(np.median(h[core]))
    # local mean over ICH voxels only (3x3 in-plane), so that brain does not leak in
    w = _INPLANE.astype(np.float32)
    num = ndi.convolve(np.where(m, h, 0).astype(np.float32), w, mode="constant")
    den = ndi.convolve(m.astype(np.float32), w, mode="constant")
    local = np.where(m, num / np.maximum(den, 1.0), 0.0)
    threshold = core_median - HYPODENSE_DROP_HU
    hypo_core = core & (h < threshold)
    out: dict[str, Any] = {
        "hu_mean": mean,
        "hu_sd": sd,
        "hu_median": float(np.median(values)),
        "hu_p10": float(np.percentile(values, 10)),
        "hu_p90": float(np.percentile(values, 90)),
        "hu_cv": sd / mean if mean > 0 else 0.0,
        "hypodense_threshold_hu": threshold,
        "hypodense_fraction": float(np.count_nonzero(hypo_core) / np.count_nonzero(core)),
    }
    out.update(_sign_heuristics(m, core, local, threshold))
    return out


def _sign_heuristics(m: np.ndarray, core: np.ndarray, local: np.ndarray, threshold: float) -> dict[str, Any]:
    """Blend-sign-like: a hypodense region (locally averaged HU) on the ICH border, >= 18 HU
    darker than the rest of the ICH and holding at least 3 % of it."""
    hypo = m & (local < threshold)
    lab, n = ndi.label(hypo, structure=_FULL)
    border = m & ~core
    n_total = np.count_nonzero(m)
    blend = False
    for r in range(1, n + 1):
        reg = lab == r
        size = np.count_nonzero(reg)
        if size < max(MIN_REGION_VOXELS, MIN_REGION_FRACTION * n_total):
            continue
        rest = m & ~reg
        if not rest.any():
            continue
        drop = float(local[rest].mean() - local[reg].mean())
        # "on the border": more than a quarter of the region lies on the ICH border
        if np.count_nonzero(reg & border) > 0.25 * size and drop >= BLEND_DROP_HU:
            blend = True
            break
    return {"blend_sign_like": blend}
