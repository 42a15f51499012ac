"""Change between a follow-up and an earlier scan: volumes, interval, new IVH and expansion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from dicomnode.compare.plane import prior_plane
from dicomnode.compare.register import register_rigid
from dicomnode.domain import ICH, IVH, OEDEMA, Comparison, FollowupScan, PriorPlane


@dataclass(frozen=True)
class ExpansionRule:
    """Haematoma expansion: growth of more than ``abs_ml`` mL or more than ``rel`` (fraction)."""

    abs_ml: float = 6.0
    rel: float = 0.33
    new_ivh_ml: float = 1.0  # IVH above this at follow-up, none (below it) before: new IVH
    min_correlation: float = 0.85  # registration trusted at or above this brain HU correlation

    @property
    def definition(self) -> str:
        return f"ICH growth > {self.abs_ml:g} mL or > {self.rel * 100:g} %"

    def expanded(self, prior_ml: float, ml: float) -> bool:
        growth = ml - prior_ml
        return bool(growth > self.abs_ml or (prior_ml > 0 and growth > self.rel * prior_ml))


def compartment_volumes_ml(labels: sitk.Image) -> dict[int, float]:
    """ICH, IVH and oedema volumes (mL) of a label map: voxel count x voxel volume."""
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=8)
    return {k: float(counts[k]) * voxel_ml for k in (ICH, IVH, OEDEMA)}


def compare_scans(prior: FollowupScan, current: FollowupScan, rule: ExpansionRule) -> Comparison:
    """Register ``current`` to ``prior`` and measure the change (each from its own labels).

    A registration that fails or is not trusted is reported in ``registration``; the volumes
    do not depend on it (each scan is measured on its own label map).
    """
    return _compare(prior, current, rule)[0]


def compare_with_plane(prior: FollowupScan, current: FollowupScan, rule: ExpansionRule, *,
                       key_slice: int | None) -> tuple[Comparison, PriorPlane]:
    """``compare_scans`` plus the prior on the follow-up's ``key_slice`` (see ``prior_plane``),
    for the comparison key image."""
    comparison, transform = _compare(prior, current, rule)
    return comparison, prior_plane(prior.image, prior.labels, current.image, transform, key_slice)


def _compare(prior: FollowupScan, current: FollowupScan, rule: ExpansionRule
             ) -> tuple[Comparison, sitk.Transform | None]:
    transform, registration = register_rigid(prior.image, current.image,
                                             min_correlation=rule.min_correlation)
    before, after = compartment_volumes_ml(prior.labels), compartment_volumes_ml(current.labels)
    ich0, ich1 = before[ICH], after[ICH]
    interval_h = None
    if prior.acquired is not None and current.acquired is not None:
        interval_h = round((current.acquired - prior.acquired).total_seconds() / 3600.0, 2)
    return Comparison(
        prior_series_instance_uid=prior.series_instance_uid,
        prior_study_datetime=prior.acquired.isoformat() if prior.acquired else "",
        interval_h=interval_h,
        prior_ich_volume_ml=round(ich0, 3), ich_volume_ml=round(ich1, 3),
        ich_change_ml=round(ich1 - ich0, 3),
        ich_change_pct=round(100.0 * (ich1 - ich0) / ich0, 1) if ich0 > 0 else None,
        prior_ivh_volume_ml=round(before[IVH], 3), ivh_volume_ml=round(after[IVH], 3),
        ivh_change_ml=round(after[IVH] - before[IVH], 3),
        prior_oedema_volume_ml=round(before[OEDEMA], 3), oedema_volume_ml=round(after[OEDEMA], 3),
        oedema_change_ml=round(after[OEDEMA] - before[OEDEMA], 3),
        new_ivh=bool(before[IVH] < rule.new_ivh_ml <= after[IVH]),
        expansion=rule.expanded(ich0, ich1),
        definition=rule.definition,
        registration=registration,
        prior_he_probability=prior.he_probability,
    ), transform
