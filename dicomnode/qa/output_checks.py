"""Output checks, after measuring: is the model's answer plausible for this scan?

Inputs: the :class:`~dicomnode.domain.CTVolume`, its :class:`~dicomnode.domain.LabelMap` and
:class:`~dicomnode.domain.Measurements`, and ``[qa]`` settings. Outputs: a
:class:`~dicomnode.domain.QAReport`. Side effects: none.

- ``brain_volume``: the brain mask's volume (mL) in a plausible adult range. A scan whose
  bone and air were zeroed gives a "brain" of the whole head and more;
- ``ich_mean_hu``, ``ivh_mean_hu``: each blood label's mean HU (fresh blood is about 50 to
  90 HU), and ``ich_hu_fraction``, ``ivh_hu_fraction``: the fraction of its voxels within
  ``blood_hu_range``; measured when the label holds at least ``min_blood_ml``;
- ``hemorrhage_fraction``: (ICH + IVH) / brain volume;
- ``outside_brain``: the fraction of labelled voxels outside the brain mask grown by 3 mm;
- ``component_count``: ICH components of at least 0.1 mL;
- ``abc2_consistency``: ABC/2 over the voxel ICH volume, when ICH is at least ``min_abc2_ml``
  and one component (ABC/2 assumes one ellipsoid-like haematoma).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from dicomnode.brain import image_brain_mask
from dicomnode.config import QASettings
from dicomnode.domain import ICH, IVH, LABELS, CTVolume, LabelMap, Measurements, QACheck, QAReport

from .common import check, fmt_range, not_measured

OUTSIDE_MARGIN_MM = 3.0
MIN_COMPONENT_ML = 0.1


def output_checks(volume: CTVolume, labels: LabelMap, measurements: Measurements,
                  cfg: QASettings) -> QAReport:
    """Every output check (see the module docstring)."""
    hu = np.asarray(sitk.GetArrayViewFromImage(volume.image), dtype=np.float32)
    lab = np.asarray(sitk.GetArrayViewFromImage(labels.image))
    sz, sy, sx = (float(s) for s in volume.image.GetSpacing()[::-1])
    voxel_ml = sz * sy * sx / 1000.0
    mask = image_brain_mask(volume.image)
    brain_ml = float(mask.sum() * voxel_ml)
    lo, hi = cfg.brain_volume_ml
    checks = [check("brain_volume", brain_ml, f"{fmt_range(lo, hi)} mL", lo <= brain_ml <= hi,
                    f"brain volume {brain_ml:.0f} mL", cfg)]
    for value, prefix in ((ICH, "ich"), (IVH, "ivh")):
        checks += _blood_hu(hu[lab == value], voxel_ml, LABELS[value], prefix, cfg)
    blood_ml = float(measurements.ich_volume_ml + measurements.ivh_volume_ml)
    fraction = blood_ml / brain_ml if brain_ml > 0 else 0.0
    checks.append(check("hemorrhage_fraction", fraction, f"<= {cfg.max_hemorrhage_fraction:.0%}",
                        fraction <= cfg.max_hemorrhage_fraction,
                        f"haemorrhage {fraction:.1%} of the brain ({blood_ml:.1f} mL)", cfg))
    checks.append(_outside(lab, mask, (sy, sx), cfg))
    components = _components(lab == ICH, voxel_ml, cfg)
    checks.append(components)
    checks.append(_abc2(measurements, components.value, cfg))
    return QAReport(tuple(checks))


def _blood_hu(values: np.ndarray, voxel_ml: float, name: str, prefix: str,
              cfg: QASettings) -> list[QACheck]:
    mlo, mhi = cfg.blood_mean_hu
    rlo, rhi = cfg.blood_hu_range
    mean_limit = f"{fmt_range(mlo, mhi)} HU"
    frac_limit = f">= {cfg.min_blood_hu_fraction:.0%} within {fmt_range(rlo, rhi)} HU"
    ml = values.size * voxel_ml
    if ml < cfg.min_blood_ml:
        why = f"{name} {ml:.2f} mL, below {cfg.min_blood_ml:g} mL"
        return [not_measured(f"{prefix}_mean_hu", mean_limit, why),
                not_measured(f"{prefix}_hu_fraction", frac_limit, why)]
    mean = float(values.mean())
    inside = float(((values >= rlo) & (values <= rhi)).mean())
    return [check(f"{prefix}_mean_hu", mean, mean_limit, mlo <= mean <= mhi,
                  f"{name} mean {mean:.0f} HU" + ("" if mlo <= mean <= mhi else
                                                  ", not blood-like"), cfg),
            check(f"{prefix}_hu_fraction", inside, frac_limit,
                  inside >= cfg.min_blood_hu_fraction,
                  f"{name}: {inside:.0%} of voxels within {fmt_range(rlo, rhi)} HU", cfg)]


def _outside(lab: np.ndarray, mask: np.ndarray, spacing_yx: tuple[float, float],
             cfg: QASettings) -> QACheck:
    limit = f"<= {cfg.max_outside_fraction:.0%} of labelled voxels"
    labelled = lab > 0
    n = int(labelled.sum())
    if n == 0:
        return not_measured("outside_brain", limit, "no labels")
    sy, sx = spacing_yx
    ry, rx = max(1, round(OUTSIDE_MARGIN_MM / sy)), max(1, round(OUTSIDE_MARGIN_MM / sx))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    disk = ((y / ry) ** 2 + (x / rx) ** 2 <= 1.0)[None]
    grown = ndi.binary_dilation(mask, structure=disk)
    fraction = float((labelled & ~grown).sum() / n)
    return check("outside_brain", fraction, limit, fraction <= cfg.max_outside_fraction,
                 f"{fraction:.1%} of the labelled voxels lie outside the intracranial space", cfg)


def _components(ich: np.ndarray, voxel_ml: float, cfg: QASettings) -> QACheck:
    limit = f"<= {cfg.max_components}"
    if not ich.any():
        return not_measured("component_count", limit, "no ICH")
    comp, n = ndi.label(ich, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel())[1:] * voxel_ml
    count = int((sizes >= MIN_COMPONENT_ML).sum())
    return check("component_count", float(count), limit, count <= cfg.max_components,
                 f"ICH in {count} separate components of >= {MIN_COMPONENT_ML:g} mL", cfg)


def _abc2(m: Measurements, components: float | str | None, cfg: QASettings) -> QACheck:
    lo, hi = cfg.abc2_ratio
    limit = f"ABC/2 / voxel volume {fmt_range(lo, hi)}"
    if isinstance(components, float) and components > 1:
        return not_measured("abc2_consistency", limit,
                            f"ICH in {components:.0f} components (ABC/2 assumes one haematoma)")
    if m.ich_volume_ml < cfg.min_abc2_ml:
        return not_measured("abc2_consistency", limit,
                            f"ICH {m.ich_volume_ml:.1f} mL, below {cfg.min_abc2_ml:g} mL")
    ratio = float(m.abc2_volume_ml / m.ich_volume_ml)
    return check("abc2_consistency", ratio, limit, lo <= ratio <= hi,
                 f"ABC/2 {m.abc2_volume_ml:.1f} mL vs voxel volume {m.ich_volume_ml:.1f} mL", cfg)
