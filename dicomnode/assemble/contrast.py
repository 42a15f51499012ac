"""Non-contrast CT only: contrast-enhanced, angiographic and time-resolved series are refused.

The model reads blood as a dense region on a non-contrast scan; iodine in vessels, sinuses,
enhancing tissue or a perfusion series is just as dense and would be reported as haemorrhage.
What decides, in this order (series-level facts before study-level text):

1. the Contrast/Bolus module of the series (PS3.3 C.7.6.4: Agent, Route, Volume, Ingredient;
   for Enhanced CT the Contrast/Bolus Usage functional group, C.7.6.16.2.12): a real value means
   contrast. Empty values and "NONE", "NO", "N/A" and the like (``contrast_absent_values``)
   count as absent;
2. time-resolved acquisition: several planes at each position from several acquisitions
   (perfusion, dynamic CTA); the same planes re-sent under new SOP Instance UIDs are not;
3. virtual non-contrast images (``vnc_regex`` on Image Type and series description);
4. the series description and protocol name: a negated phrase ("WO CONTRAST", "non-contrast",
   "NCCT", "ohne KM", "sans injection", ...) makes the series non-contrast; otherwise a contrast
   phrase ("CTA", "angio", "perfusion", "C+", "with contrast", ...) refuses it;
5. the study description, the same way: a study "CT HEAD W/WO CONTRAST" holds both kinds, so
   it refuses nothing; a study "CTA HEAD" refuses its series whose own text said nothing.

Every reason begins with ``contrast:`` and names what was found.
"""

from __future__ import annotations

import re
from typing import Any

from dicomnode.config import EligibilitySettings

# Series attribute (as recorded by receive.checks.read_header) -> DICOM attribute name.
CONTRAST_ATTRIBUTES = {
    "contrast_agent": "Contrast/Bolus Agent",
    "contrast_route": "Contrast/Bolus Route",
    "contrast_volume_ml": "Contrast/Bolus Volume",
    "contrast_ingredient": "Contrast/Bolus Ingredient",
}


def _present(value: Any, rules: EligibilitySettings) -> bool:
    """A real value: not empty, not zero, not one of the 'absent' words."""
    if value is None:
        return False
    if isinstance(value, int | float):
        return value > 0
    text = str(value).strip().strip(".").upper()
    return bool(text) and text not in {v.upper() for v in rules.contrast_absent_values}


def _text_verdict(text: str, rules: EligibilitySettings) -> str | None:
    """'non-contrast', 'contrast' or None (the text says nothing) for one description."""
    if not text.strip():
        return None
    if re.search(rules.non_contrast_regex, text):
        return "non-contrast"
    if re.search(rules.contrast_description_regex, text):
        return "contrast"
    return None


def contrast_reason(attrs: dict[str, Any], geometry: dict[str, Any],
                    rules: EligibilitySettings) -> str | None:
    """None for a non-contrast series, else the reason (starting with ``contrast:``)."""
    for key, name in CONTRAST_ATTRIBUTES.items():
        value = attrs.get(key)
        if _present(value, rules):
            return f"contrast: {name} {str(value)[:64]!r}"
    if str(attrs.get("contrast_administered", "")).upper() == "YES":
        return "contrast: Contrast/Bolus Agent Administered YES (Enhanced CT functional group)"
    phases = _phases(geometry)
    if rules.reject_time_resolved and phases >= 2.0 and int(geometry.get("acquisitions") or 0) >= 2:
        return (f"contrast: time-resolved series ({phases:.1f} planes per position from "
                f"{geometry['acquisitions']} acquisitions, as in perfusion or dynamic angiography)")
    image_type = "\\".join(str(v) for v in attrs.get("image_type") or [])
    for what, text in (("image type", image_type),
                       ("series description", attrs.get("series_description", ""))):
        if text and re.search(rules.vnc_regex, str(text)):
            return f"contrast: virtual non-contrast image ({what} {str(text)[:64]!r})"
    for key, what in (("series_description", "series description"),
                      ("protocol_name", "protocol name")):
        text = str(attrs.get(key, "") or "")
        verdict = _text_verdict(text, rules)
        if verdict == "non-contrast":
            return None
        if verdict == "contrast":
            return f"contrast: {what} {text[:64]!r} names a contrast study"
    study = str(attrs.get("study_description", "") or "")
    if _text_verdict(study, rules) == "contrast":
        return f"contrast: study description {study[:64]!r} names a contrast study"
    return None


def _phases(geometry: dict[str, Any]) -> float:
    """Planes per distinct position along the normal (1.0 for an ordinary series)."""
    n = int(geometry.get("n_frames") or 0) - int(geometry.get("missing_geometry") or 0)
    distinct = n - int(geometry.get("duplicate_positions") or 0)
    return n / distinct if distinct > 0 else 1.0
