"""The feature dict of one study: measurements, header, clinical and radiomics features.

Inputs: a :class:`~dicomnode.domain.CTVolume`, its :class:`~dicomnode.domain.LabelMap` and
:class:`~dicomnode.domain.Measurements`, optional header and clinical mappings and a pyradiomics
params file. Image presets add the ``img_*`` columns (:mod:`dicomnode.predict.image_features`).
Outputs: ``dict[str, float]`` with prefixes ``m_``, ``hdr_``, ``clin_``, ``rad_``;
anything unknown is NaN (recipes impute inside their sklearn Pipeline). Side effects: none.
Names are listed in docs/prediction.md "Features".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dicomnode.domain import CTVolume, LabelMap, Measurements

from .clinical import clinical_features, parse_value
from .radiomics_features import radiomics_features

__all__ = [
    "MARKER_FEATURES",
    "SITES",
    "extract_features",
    "features_from_cohort_row",
    "header_features",
    "measurement_features",
]

log = logging.getLogger(__name__)

SITES = ("lobar", "deep", "infratentorial")  # Measurements.site; "none" -> all zero
#: Markers always emitted as m_<key> (NaN when absent, e.g. without ICH); see docs/measurements.md.
MARKER_FEATURES = (
    "abc2_a_mm", "abc2_b_mm", "abc2_c_mm", "largest_area_mm2", "ich_slices", "abc2_to_volume_ratio",
    "centroid_depth_mm", "min_depth_mm", "cortical_ribbon_overlap_ml", "midline_distance_mm",
    "ap_fraction", "height_fraction", "brain_volume_ml",
    "hu_mean", "hu_sd", "hu_median", "hu_p10", "hu_p90", "hu_cv",
    "hypodense_threshold_hu", "hypodense_fraction", "blend_sign_like",
    "surface_area_mm2", "sphericity", "solidity", "convex_hull_volume_ml", "extent",
    "n_components", "n_satellites", "elongation", "flatness",
)  # fmt: skip
#: Markers never used as features: positions in scanner coordinates, not properties of the bleed.
EXCLUDED_MARKERS = frozenset({"centroid_lps_mm", "tentorium_s_mm"})


def _num(value: Any) -> float:
    """A scalar as float (bool -> 0/1); anything else (None, text, tuples) -> NaN."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        v = float(value)
        return v if math.isfinite(v) else math.nan
    if hasattr(value, "item") and getattr(value, "size", 1) == 1 and not isinstance(value, str):
        return _num(value.item())
    return math.nan


def measurement_features(measurements: Measurements) -> dict[str, float]:
    """``m_*``: volumes, cortical involvement 0/1, site one-hot and numeric markers."""
    m = measurements
    out: dict[str, float] = {
        "m_ich_volume_ml": float(m.ich_volume_ml),
        "m_ivh_volume_ml": float(m.ivh_volume_ml),
        "m_abc2_volume_ml": float(m.abc2_volume_ml),
        "m_oedema_volume_ml": float(m.oedema_volume_ml),
        "m_extra_axial_volume_ml": float(m.extra_axial_volume_ml),
        "m_ivh_present": float(m.ivh_volume_ml > 0),
        "m_cortical_involvement": float(bool(m.cortical_involvement)),
    }
    if m.site not in (*SITES, "none"):
        log.warning("unknown site %r: every site feature 0", m.site)
    for s in SITES:
        out[f"m_site_{s}"] = float(m.site == s)
    for key in MARKER_FEATURES:
        out[f"m_{key}"] = _num(m.markers.get(key))
    for key, value in m.markers.items():  # markers added later by the measure stage
        if key in MARKER_FEATURES or key in EXCLUDED_MARKERS:
            continue
        v = _num(value)
        if not math.isnan(v) or value is None:
            out[f"m_{key}"] = v
    return out


def header_features(header: Mapping[str, Any] | None) -> dict[str, float]:
    """``hdr_age_y`` and ``hdr_sex_male`` (1 M, 0 F, NaN otherwise) from the loader's header
    summary (``patient_age_y``, ``patient_sex``; ``age_y``/``sex`` also accepted)."""
    h = header or {}
    age = h.get("patient_age_y", h.get("age_y"))
    sex = h.get("patient_sex", h.get("sex"))
    try:
        age_f = parse_value(age, name="age_y")
    except ValueError:
        age_f = math.nan
    try:
        sex_f = parse_value(sex, name="sex_male")
    except ValueError:
        sex_f = math.nan
    return {"hdr_age_y": age_f, "hdr_sex_male": sex_f}


def extract_features(
    volume: CTVolume,
    labels: LabelMap,
    measurements: Measurements,
    *,
    header: Mapping[str, Any] | None = None,
    clinical: Mapping[str, Any] | None = None,
    radiomics_params: Path | None,
) -> dict[str, float]:
    """All features of one study, in the order m_, hdr_, clin_, rad_.

    ``header`` defaults to ``volume.header``. ``clinical`` is one study's row of clinical
    variables (any names; see :func:`~dicomnode.predict.clinical.clinical_features`).
    ``radiomics_params=None`` leaves out the ``rad_*`` features.
    Every value is a float; unknown values are NaN.
    """
    out = measurement_features(measurements)
    out.update(header_features(volume.header if header is None else header))
    out.update(clinical_features(clinical))
    if radiomics_params is not None:
        out.update(radiomics_features(volume, labels, Path(radiomics_params)))
    return out


# ---- synthetic cohorts (docs/synthetic-data.md) -----------------------------------------------

#: Manifest column -> clinical variable known at admission (dicomnode.predict.clinical names).
COHORT_CLINICAL = {
    "onset_to_ct_h": "onset_to_ct_h",
    "sbp_mmhg": "sbp_mmhg",
    "anticoagulation": "anticoagulation",
    "gcs": "gcs",
    "early_seizure": "early_seizure",
}
#: Synthetic site -> Measurements.site.
COHORT_SITES = {
    "lobar": "lobar", "lobar_subcortical": "lobar", "basal_ganglia": "deep", "thalamus": "deep",
    "cerebellar": "infratentorial", "brainstem": "infratentorial",
}  # fmt: skip


def features_from_cohort_row(row: Mapping[str, Any], *, truth_measurements: bool = False) -> dict[str, float]:
    """``hdr_*`` and ``clin_*`` from a synthetic cohort row (manifest.csv/json or
    ``sample_cohort_table``); with ``truth_measurements`` also ``m_*`` from the phantom truth.

    Never returned: outcomes and risks (``he``, ``pse``, ``p_*``, follow-up columns) and the
    phantom's latent design variables (heterogeneity, irregularity, sign flags), which no
    clinician observes. ``truth_measurements`` gives ``m_ich_volume_ml`` (label volume, else the
    drawn volume), ``m_ivh_volume_ml`` (NaN in a table without images), ``m_ivh_present``,
    ``m_cortical_involvement`` and ``m_site_*``: for table-only experiments, not a substitute for
    measured features (it knows the true mask). CSV strings are parsed like clinical sidecars.
    """
    out = header_features({"age_y": row.get("age_y"), "sex": row.get("sex")})
    out.update(clinical_features({v: row.get(k) for k, v in COHORT_CLINICAL.items()}))
    if truth_measurements:

        def get(*keys: str) -> float:
            for k in keys:
                if k in row:
                    try:
                        v = parse_value(row[k], name=k)
                    except ValueError:
                        continue
                    if not math.isnan(v):
                        return v
            return math.nan

        site = COHORT_SITES.get(str(row.get("site", "")), "none")
        out.update(
            {
                "m_ich_volume_ml": get("ich_volume_ml", "volume_ml"),
                "m_ivh_volume_ml": get("ivh_volume_ml"),
                "m_ivh_present": get("ivh"),
                "m_cortical_involvement": get("cortical_involvement_measured", "cortical_involvement"),
                **{f"m_site_{s}": float(site == s) for s in SITES},
            }
        )
    return out
