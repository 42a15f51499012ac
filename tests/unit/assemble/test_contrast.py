"""Non-contrast only: contrast attributes, descriptions (with negation), time-resolved series."""

from __future__ import annotations

import pytest

from dicomnode.assemble.contrast import contrast_reason
from dicomnode.assemble.selection import evaluate
from dicomnode.config import EligibilitySettings

RULES = EligibilitySettings()
PLAIN_GEOMETRY = {"n_frames": 32, "missing_geometry": 0, "duplicate_positions": 0}


def _reason(geometry: dict | None = None, **attrs: object) -> str | None:
    return contrast_reason(dict(attrs), geometry or PLAIN_GEOMETRY, RULES)


@pytest.mark.parametrize("agent", ["", "NONE", "none", "NO", "N/A", "NA", " No. ", "0"])
def test_absent_contrast_values_count_as_absent(agent: str) -> None:
    assert _reason(contrast_agent=agent, contrast_route=agent, contrast_ingredient=agent) is None


@pytest.mark.parametrize(("attrs", "found"), [
    ({"contrast_agent": "IOPAMIDOL 370"}, "Contrast/Bolus Agent 'IOPAMIDOL 370'"),
    ({"contrast_route": "IV"}, "Contrast/Bolus Route 'IV'"),
    ({"contrast_volume_ml": 80.0}, "Contrast/Bolus Volume '80.0'"),
    ({"contrast_ingredient": "IODINE"}, "Contrast/Bolus Ingredient 'IODINE'"),
    ({"contrast_administered": "YES"}, "Agent Administered YES"),
])
def test_contrast_attributes_refuse_the_series(attrs: dict, found: str) -> None:
    # Series-level attributes decide before any text, even a "non-contrast" description.
    reason = _reason(series_description="Head NCCT", **attrs)
    assert reason is not None and reason.startswith("contrast: ") and found in reason


@pytest.mark.parametrize("text", ["CTA Head", "CT Angio Willis", "Perfusion 4D", "Head C+",
                                  "post contrast", "Head with contrast", "CT VENOGRAM",
                                  "Schädel mit KM", "Crâne avec injection", "Cabeza con contraste"])
def test_contrast_descriptions_refuse(text: str) -> None:
    reason = _reason(series_description=text)
    assert reason == f"contrast: series description {text!r} names a contrast study"
    assert _reason(protocol_name=text) == f"contrast: protocol name {text!r} names a contrast study"


@pytest.mark.parametrize("text", ["CT HEAD WO CONTRAST", "Head without contrast", "non-contrast head",
                                  "NCCT", "CT Schädel ohne KM", "Crâne sans injection", "Head C-",
                                  "CT Kopf nativ", "Head 5mm", "C-SPINE", "Brain unenhanced"])
def test_non_contrast_descriptions_stay_eligible(text: str) -> None:
    assert _reason(series_description=text) is None


def test_series_text_decides_before_study_text() -> None:
    # The study holds both phases; the series says what it is.
    assert _reason(series_description="Head 5mm", study_description="CT HEAD W/WO CONTRAST") is None
    assert _reason(series_description="Head WO", study_description="CTA HEAD") is None
    reason = _reason(series_description="Head 5mm", study_description="CTA HEAD AND NECK")
    assert reason == "contrast: study description 'CTA HEAD AND NECK' names a contrast study"


def test_time_resolved_series_is_refused() -> None:
    perfusion = {"n_frames": 320, "missing_geometry": 0, "duplicate_positions": 300,
                 "acquisitions": 16}
    reason = _reason(perfusion, series_description="Head 5mm")
    assert reason is not None and reason.startswith(
        "contrast: time-resolved series (16.0 planes per position from 16 acquisitions")
    resent = {"n_frames": 34, "missing_geometry": 0, "duplicate_positions": 2, "acquisitions": 1}
    assert _reason(resent) is None  # two slices sent twice
    # The whole series sent again under new SOP Instance UIDs: one acquisition, not a perfusion.
    again = {"n_frames": 64, "missing_geometry": 0, "duplicate_positions": 32, "acquisitions": 1}
    assert _reason(again) is None


def test_virtual_non_contrast_is_refused() -> None:
    assert _reason(image_type=["DERIVED", "PRIMARY", "AXIAL", "VNC"]).startswith(
        "contrast: virtual non-contrast image (image type")
    assert _reason(series_description="Virtual Non-Contrast 1mm").startswith("contrast: virtual")


def test_evaluate_gives_the_contrast_reason_for_an_otherwise_eligible_series() -> None:
    attrs = {"modality": "CT", "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"], "body_part": "HEAD",
             "series_description": "CTA Head", "slice_thickness_mm": 1.0, "kernel": "STANDARD",
             "columns": 512, "pixel_spacing_mm": [0.45, 0.45], "contrast_agent": "IOPAMIDOL 370"}
    geometry = {"n_frames": 150, "missing_geometry": 0, "duplicate_positions": 0,
                "orientation_consistent": True, "axial_angle_deg": 0.0, "extent_mm": 150.0}
    assert evaluate(attrs, geometry, 150, RULES) == "contrast: Contrast/Bolus Agent 'IOPAMIDOL 370'"
    attrs.update(contrast_agent="", series_description="Head 1mm")
    assert evaluate(attrs, geometry, 150, RULES) is None


def test_a_real_contrast_ct_header_is_refused() -> None:
    """pydicom's CT_small is a real contrast-enhanced CT (Contrast/Bolus Agent ISOVUE300/100)."""
    import pydicom
    from pydicom.data import get_testdata_file

    from dicomnode.receive.checks import read_header

    attrs, _ = read_header(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assert _reason(**attrs) == "contrast: Contrast/Bolus Agent 'ISOVUE300/100'"
