"""Input checks, before any model sees the scan: is it a calibrated, complete adult head CT?

Inputs: a :class:`~dicomnode.domain.CTVolume` in HU and ``[qa]`` settings. Outputs: a
:class:`~dicomnode.domain.QAReport`. Side effects: none (the brain mask is computed once per
image by :func:`dicomnode.brain.image_brain_mask` and shared with segment and measure).

Each check records its value and its limit (docs/qa.md has the calibration):

- ``air_hu``: median of the voxels below -500 HU (air around the head), and at least
  ``min_air_fraction`` of the volume is air. A pre-processed export with air set to 0 HU fails;
- ``brain_hu``: median HU inside the brain mask (grey and white matter, about 25 to 40 HU);
- ``csf_hu``: 2nd percentile inside the brain mask (CSF, about 0 to 15 HU);
- ``skull``: median over the brain's substantial slices of the fraction of a 6 mm shell
  outside the brain mask that is bone (>= 300 HU). Bone set to 0 HU, or no skull, fails;
- ``coverage_extent``: brain extent along the slice normal (mm) of the substantial slices;
- ``coverage_edges``: brain area in the first and last slice as a fraction of the largest
  (a brain cut at the vertex or above the skull base is still wide there);
- ``noise``: robust SD of the in-plane difference of neighbouring brain voxels / sqrt(2);
- ``metal``: volume above ``metal_hu`` (mL);
- ``age``: Patient's Age against the model's intended use (adults);
- ``slice_thickness``: Slice Thickness against the range the model was validated on.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from dicomnode.brain import image_brain_mask, index_affine
from dicomnode.config import QASettings
from dicomnode.domain import CTVolume, QACheck, QAReport

from .common import check, fmt_range, not_measured

AIR_BELOW_HU = -500.0
BONE_HU = 300.0
SHELL_MM = 6.0
SUBSTANTIAL_AREA = 0.3  # slices with >= 30 % of the largest brain area: skull and noise
EXTENT_AREA = 0.1  # slices with >= 10 % of the largest brain area count for the extent
NOISE_ERODE_MM = 4.0


def input_checks(volume: CTVolume, cfg: QASettings) -> QAReport:
    """Every input check of ``volume`` (see the module docstring)."""
    hu = np.asarray(sitk.GetArrayViewFromImage(volume.image), dtype=np.float32)
    sz, sy, sx = (float(s) for s in volume.image.GetSpacing()[::-1])
    mask = image_brain_mask(volume.image)
    checks = [_air(hu, cfg)]
    checks += _brain_hu(hu, mask, cfg)
    checks.append(_skull(hu, mask, (sz, sy, sx), cfg))
    checks += _coverage(mask, volume.image, sz, cfg)
    checks.append(_noise(hu, mask, (sy, sx), cfg))
    checks.append(_metal(hu, (sz, sy, sx), cfg))
    checks.append(_age(volume.header.get("patient_age_y"), cfg))
    checks.append(_thickness(volume.header.get("slice_thickness_mm"), cfg))
    return QAReport(tuple(checks))


def _air(hu: np.ndarray, cfg: QASettings) -> QACheck:
    lo, hi = cfg.air_hu
    limit = f"{fmt_range(lo, hi)} HU, >= {cfg.min_air_fraction:.0%} of voxels"
    air = hu[hu < AIR_BELOW_HU]
    fraction = air.size / max(hu.size, 1)
    if fraction < cfg.min_air_fraction:
        return check("air_hu", None if air.size == 0 else float(np.median(air)), limit, False,
                     f"HU calibration: no air around the head ({fraction:.1%} of voxels below "
                     f"{AIR_BELOW_HU:g} HU); air set to 0 HU by pre-processing?", cfg)
    median = float(np.median(air))
    return check("air_hu", median, limit, lo <= median <= hi,
                 f"HU calibration: air at {median:.0f} HU", cfg)


def _brain_hu(hu: np.ndarray, mask: np.ndarray, cfg: QASettings) -> list[QACheck]:
    lo, hi = cfg.brain_hu
    clo, chi = cfg.csf_hu
    if not mask.any():
        return [check("brain_hu", None, f"{fmt_range(lo, hi)} HU", False,
                      "HU calibration: no brain found", cfg),
                not_measured("csf_hu", f"{fmt_range(clo, chi)} HU", "no brain found")]
    inside = hu[mask]
    median = float(np.median(inside))
    csf = float(np.percentile(inside, 2))
    return [check("brain_hu", median, f"{fmt_range(lo, hi)} HU", lo <= median <= hi,
                  f"HU calibration: brain tissue at {median:.1f} HU", cfg),
            check("csf_hu", csf, f"{fmt_range(clo, chi)} HU", clo <= csf <= chi,
                  f"HU calibration: CSF (2nd percentile of the brain) at {csf:.1f} HU", cfg)]


def _substantial(mask: np.ndarray, fraction: float) -> np.ndarray:
    area = mask.sum(axis=(1, 2))
    if area.max() == 0:
        return np.zeros(0, dtype=int)
    return np.flatnonzero(area >= fraction * area.max())


def _skull(hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float],
           cfg: QASettings) -> QACheck:
    limit = f">= {cfg.min_skull_fraction:.0%} bone around the brain"
    rows = _substantial(mask, SUBSTANTIAL_AREA)
    if rows.size == 0:
        return check("skull", 0.0, limit, False, "no skull found: no brain found", cfg)
    _, sy, sx = spacing
    ry, rx = max(1, round(SHELL_MM / sy)), max(1, round(SHELL_MM / sx))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    disk = (y / ry) ** 2 + (x / rx) ** 2 <= 1.0
    fractions = []
    for k in rows:
        shell = ndi.binary_dilation(mask[k], structure=disk) & ~mask[k]
        if shell.any():
            fractions.append(float((hu[k][shell] >= BONE_HU).mean()))
    value = float(np.median(fractions)) if fractions else 0.0
    return check("skull", value, limit, value >= cfg.min_skull_fraction,
                 f"skull: {value:.0%} of a {SHELL_MM:g} mm shell around the brain is bone", cfg)


def _coverage(mask: np.ndarray, image: sitk.Image, sz: float,
              cfg: QASettings) -> list[QACheck]:
    extent_limit = f">= {cfg.min_brain_extent_mm:g} mm"
    edge_limit = f"<= {cfg.max_edge_area_fraction:.0%} of the largest brain slice"
    area = mask.sum(axis=(1, 2)).astype(float)
    if area.max() == 0:
        return [check("coverage_extent", 0.0, extent_limit, False, "coverage: no brain found",
                      cfg),
                not_measured("coverage_edges", edge_limit, "no brain found")]
    rows = _substantial(mask, EXTENT_AREA)
    affine = index_affine(image)
    s = affine[2, 0] * np.arange(mask.shape[0]) + affine[2, 3]  # S of each slice (k only)
    # along the slice normal: the voxel centres plus half a slice at each end
    extent = float(abs(s[rows.max()] - s[rows.min()]) + sz)
    edges = float(max(area[0], area[-1]) / area.max())
    which = "first" if area[0] >= area[-1] else "last"
    where = "inferior" if (s[0] < s[-1]) == (which == "first") else "superior"
    return [check("coverage_extent", extent, extent_limit, extent >= cfg.min_brain_extent_mm,
                  f"coverage: brain covered over {extent:.0f} mm along the slice normal", cfg),
            check("coverage_edges", edges, edge_limit, edges <= cfg.max_edge_area_fraction,
                  f"coverage: the brain is cut at the {where} end of the scan ({edges:.0%} of "
                  f"the largest brain slice)" if edges > cfg.max_edge_area_fraction else
                  f"coverage: the brain ends inside the scan ({edges:.0%} at the edges)", cfg)]


def _noise(hu: np.ndarray, mask: np.ndarray, spacing_yx: tuple[float, float],
           cfg: QASettings) -> QACheck:
    limit = f"<= {cfg.max_noise_hu:g} HU"
    sy, sx = spacing_yx
    ry, rx = max(1, round(NOISE_ERODE_MM / sy)), max(1, round(NOISE_ERODE_MM / sx))
    core = ndi.binary_erosion(mask, structure=np.ones((1, 2 * ry + 1, 2 * rx + 1), bool))
    pair = core[:, :, 1:] & core[:, :, :-1]
    if pair.sum() < 100:
        return not_measured("noise", limit, "too little brain")
    d = (hu[:, :, 1:] - hu[:, :, :-1])[pair]
    sd = float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))
    return check("noise", sd, limit, sd <= cfg.max_noise_hu,
                 f"noise: {sd:.1f} HU SD in the brain", cfg)


def _metal(hu: np.ndarray, spacing: tuple[float, float, float], cfg: QASettings) -> QACheck:
    ml = float((hu >= cfg.metal_hu).sum() * spacing[0] * spacing[1] * spacing[2] / 1000.0)
    return check("metal", ml, f"<= {cfg.max_metal_ml:g} mL above {cfg.metal_hu:g} HU",
                 ml <= cfg.max_metal_ml,
                 f"metal: {ml:.2f} mL above {cfg.metal_hu:g} HU (streak artefacts likely)"
                 if ml > cfg.max_metal_ml else f"metal: {ml:.2f} mL above {cfg.metal_hu:g} HU", cfg)


def _age(age_y: object, cfg: QASettings) -> QACheck:
    limit = f">= {cfg.min_age_y} years"
    if not isinstance(age_y, int | float) or isinstance(age_y, bool):
        return not_measured("age", limit, "Patient's Age not given")
    return check("age", float(age_y), limit, age_y >= cfg.min_age_y,
                 f"age: {age_y:g} years, below the model's intended use (adults)"
                 if age_y < cfg.min_age_y else f"age: {age_y:g} years", cfg)


def _thickness(thickness_mm: object, cfg: QASettings) -> QACheck:
    lo, hi = cfg.validated_thickness_mm
    limit = f"{fmt_range(lo, hi)} mm"
    if not isinstance(thickness_mm, int | float) or isinstance(thickness_mm, bool):
        return not_measured("slice_thickness", limit, "Slice Thickness not given")
    ok = lo <= thickness_mm <= hi
    return check("slice_thickness", float(thickness_mm), limit, ok,
                 f"slice thickness {thickness_mm:g} mm" + ("" if ok else
                                                          " outside the validated range"), cfg)
