"""Measure stage: volumes, ABC/2, cortical involvement, site, density and shape markers.

Inputs: a :class:`~dicomnode.domain.CTVolume` (HU) and a :class:`~dicomnode.domain.LabelMap` on
its grid. Outputs: :class:`~dicomnode.domain.Measurements`. Side effects: none.
Every definition, rule and validation figure is in docs/measurements.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from dicomnode.brain import brain_geometry, image_brain_mask
from dicomnode.domain import EXTRA_AXIAL, ICH, IVH, OEDEMA, CTVolume, LabelMap, Measurements

from .location import locate
from .markers import density_markers, shape_markers
from .volumes import abc2, volume_ml

__all__ = ["measure"]


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def measure(volume: CTVolume, labels: LabelMap) -> Measurements:
    """Measure the label map ``labels`` on the CT ``volume`` (same grid).

    Without ICH, every number is 0.0, the site is "none", cortical involvement False and
    ``largest_area_slice`` None; the other volumes are still measured.
    """
    if not _same_grid(volume.image, labels.image):
        raise ValueError(
            f"label map grid {labels.image.GetSize()} / {labels.image.GetSpacing()} differs from the "
            f"volume grid {volume.image.GetSize()} / {volume.image.GetSpacing()}"
        )
    lab = sitk.GetArrayViewFromImage(labels.image)
    spacing = tuple(float(s) for s in volume.image.GetSpacing()[::-1])
    ich = lab == ICH
    vols = {k: volume_ml(lab == k, spacing) for k in (ICH, IVH, OEDEMA, EXTRA_AXIAL)}  # type: ignore[arg-type]
    if not ich.any():
        return Measurements(
            ich_volume_ml=0.0,
            ivh_volume_ml=vols[IVH],
            abc2_volume_ml=0.0,
            largest_area_slice=None,
            cortical_involvement=False,
            site="none",
            markers={},
            extra_axial_volume_ml=vols[EXTRA_AXIAL],
            oedema_volume_ml=vols[OEDEMA],
        )
    hu = sitk.GetArrayViewFromImage(volume.image)
    est = abc2(ich, spacing)  # type: ignore[arg-type]
    geom = brain_geometry(np.asarray(hu), volume.image, mask=image_brain_mask(volume.image))
    loc = locate(ich, geom)
    markers: dict[str, Any] = {
        "abc2_a_mm": est.a_mm,
        "abc2_b_mm": est.b_mm,
        "abc2_c_mm": est.c_mm,
        "largest_area_mm2": est.largest_area_mm2,
        "ich_slices": est.n_slices,
        "abc2_to_volume_ratio": est.volume_ml / vols[ICH],
        "centroid_lps_mm": loc.centroid_lps_mm,
        "centroid_depth_mm": loc.centroid_depth_mm,
        "min_depth_mm": loc.min_depth_mm,
        "cortical_ribbon_overlap_ml": loc.ribbon_overlap_ml,
        "midline_distance_mm": abs(loc.lateral_mm),
        "ap_fraction": loc.ap_fraction,
        "height_fraction": loc.height_fraction,
        "brain_volume_ml": volume_ml(geom.mask, spacing),  # type: ignore[arg-type]
        "tentorium_s_mm": geom.tentorium_mm,
    }
    markers.update(density_markers(ich, np.asarray(hu), spacing))  # type: ignore[arg-type]
    markers.update(shape_markers(ich, spacing))  # type: ignore[arg-type]
    return Measurements(
        ich_volume_ml=vols[ICH],
        ivh_volume_ml=vols[IVH],
        abc2_volume_ml=est.volume_ml,
        largest_area_slice=est.slice_index,
        cortical_involvement=loc.cortical_involvement,
        site=loc.site,
        markers=markers,
        extra_axial_volume_ml=vols[EXTRA_AXIAL],
        oedema_volume_ml=vols[OEDEMA],
    )
