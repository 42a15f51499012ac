"""Cortical involvement and haematoma site from atlas-free rules on the brain geometry.

Inputs: the ICH mask (z, y, x) and a :class:`~dicomnode.brain.BrainGeometry`.
Outputs: cortical involvement (bool), site ("lobar", "deep", "infratentorial" or "none") and
the numbers behind them. Side effects: none. Rules: docs/measurements.md ("Location").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from dicomnode.brain import BrainGeometry

RIBBON_MM = 4.0  # cortical ribbon: brain voxels at most this far (centre to centre) from its surface
DEEP_HALF_WIDTH = 0.55  # deep box: |L - midline| <= 0.55 x brain half width
DEEP_AP = (-0.25, 0.25)  # and P - AP centre within these fractions of the brain half length
DEEP_HEIGHT = (0.0, 0.42)  # and height above the tentorium within these fractions of its span


@dataclass(frozen=True)
class Location:
    site: str
    cortical_involvement: bool
    centroid_lps_mm: tuple[float, float, float] | None
    ribbon_overlap_ml: float  # ICH volume within the supratentorial cortical ribbon
    centroid_depth_mm: float  # distance of the centroid from the brain surface
    min_depth_mm: float  # smallest distance of an ICH voxel from the brain surface
    lateral_mm: float  # centroid L minus the midline
    ap_fraction: float  # (P - AP centre) / half length
    height_fraction: float  # (S - tentorium) / (superior - tentorium)


NO_LOCATION = Location("none", False, None, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def ribbon(geom: BrainGeometry) -> np.ndarray:
    """Cortical ribbon: supratentorial brain voxels within ``RIBBON_MM`` of the brain surface."""
    return geom.mask & (geom.depth_mm <= RIBBON_MM) & geom.supratentorial()


def locate(ich: np.ndarray, geom: BrainGeometry) -> Location:
    """Site and cortical involvement of the haematoma ``ich`` (bool, z y x)."""
    if not ich.any():
        return NO_LOCATION
    kji = np.argwhere(ich)
    centroid = geom.to_lps(kji.mean(axis=0))[0]
    c = (float(centroid[0]), float(centroid[1]), float(centroid[2]))
    if geom.empty:  # no brain found: fall back to "lobar", no cortical involvement (documented)
        return Location("lobar", False, c, 0.0, float("nan"), float("nan"), float("nan"),
                        float("nan"), float("nan"))
    touch = ndi.binary_dilation(ich) & ribbon(geom)
    voxel_ml = float(np.prod(geom.spacing_zyx_mm)) / 1000.0
    overlap_ml = float(np.count_nonzero(touch & ich)) * voxel_ml
    cortical = bool(touch.any())
    k, j, i = np.clip(np.round(kji.mean(axis=0)).astype(int), 0, np.array(ich.shape) - 1)
    depth_c = float(geom.depth_mm[k, j, i])
    depth_min = float(geom.depth_mm[ich].min())
    lateral = c[0] - geom.midline_mm
    ap = (c[1] - geom.ap_centre_mm) / max(geom.half_length_mm, 1.0)
    height = (c[2] - geom.tentorium_mm) / max(geom.superior_mm - geom.tentorium_mm, 1.0)
    if c[2] < geom.tentorium_mm:
        site = "infratentorial"
    elif (
        abs(lateral) <= DEEP_HALF_WIDTH * geom.half_width_mm
        and DEEP_AP[0] <= ap <= DEEP_AP[1]
        and DEEP_HEIGHT[0] <= height <= DEEP_HEIGHT[1]
    ):
        site = "deep"
    else:
        site = "lobar"
    return Location(site, cortical, c, overlap_ml, depth_c, depth_min, lateral, ap, height)
