"""Every coded concept that dicomnode writes into SEG and SR objects, in one place.

Standard concepts come from pydicom's code dictionary (SNOMED CT ``SCT``, DICOM ``DCM``, UCUM
units), so their values and meanings are the ones DICOM PS3.16 lists. Concepts that no standard
terminology has (risk models, the CAVE score, the lobar/deep/infratentorial site classes, the
density and shape markers) are in the private coding scheme ``99DCMNODE``, described in the Coding
Scheme Identification Sequence of every object that uses it (PS3.3 C.12.1.1.2) and, each with a
definition, in docs/outputs.md. A new concept is added here and there, never inline elsewhere.

Segments use post-coordination (PS3.3 C.8.20.2): a morphologic property type from CID 7151
(Hemorrhage, Edema) plus an anatomic region (brain, brain ventricle, meninges) rather than
pre-coordinated disorder codes, so that every concept is one that DICOM lists for segmentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.color import CIELabColor
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.domain import EXTRA_AXIAL, ICH, IVH, OEDEMA

# ---------------------------------------------------------------- private coding scheme
SCHEME = "99DCMNODE"
SCHEME_NAME = "dicomnode private concepts"
SCHEME_VERSION = "1"
SCHEME_ORGANIZATION = "dicomnode"


def private(value: str, meaning: str) -> Code:
    """A concept of the private coding scheme ``99DCMNODE`` (value: upper case, at most 16 chars)."""
    if not value or len(value) > 16 or value != value.upper():
        raise ValueError(f"private code value must be 1-16 upper-case characters, got {value!r}")
    if not meaning or len(meaning) > 64:
        raise ValueError(f"code meaning must be 1-64 characters, got {meaning!r}")
    return Code(value, SCHEME, meaning)


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """Coding Scheme Identification Sequence items for the private scheme (PS3.3 C.12.1.1.2)."""
    return [
        CodingSchemeIdentificationItem(
            designator=SCHEME,
            name=SCHEME_NAME,
            version=SCHEME_VERSION,
            responsible_organization=SCHEME_ORGANIZATION,
        )
    ]


# ---------------------------------------------------------------- standard concepts
MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure  # 49755003, CID 7150
HEMORRHAGE = codes.SCT.Hemorrhage  # 50960005, CID 7151
EDEMA = codes.SCT.Edema  # 79654002, CID 7151
BRAIN = codes.SCT.Brain  # 12738006
BRAIN_VENTRICLE = codes.SCT.BrainVentricle  # 35764002
MENINGES = codes.SCT.Meninges  # 1231004
CT_OF_HEAD = codes.SCT.ComputedTomographyOfHead  # 303653007, procedure reported
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence  # 123110, CID 7162
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # 109102, CID 7005 purpose of reference

VOLUME = codes.SCT.Volume  # 118565006
SUM_OF_SEGMENTED_VOXELS = codes.DCM.SumOfSegmentedVoxelMethodForVolume  # 126030
ATTENUATION_COEFFICIENT = codes.DCM.AttenuationCoefficient  # 112031, measured in HU
MEAN = codes.SCT.Mean  # 373098007, CID 7464 derivation
STANDARD_DEVIATION = codes.SCT.StandardDeviation  # 386136009
MEDIAN = codes.SCT.Median  # 373099004
AREA = codes.SCT.Area  # 42798000, of a planar region (TID 1410)
YES = codes.SCT.Yes  # 373066001
NO = codes.SCT.No  # 373067005
INTRACRANIAL_HAEMORRHAGE = codes.SCT.IntracranialHemorrhage  # 1386000, the report-level finding
PRESENCE = codes.DCM.PresenceOfProperty  # 121052, of a finding in a measurement group
PRESENT = codes.cid240.Present  # SCT 52101004, CID 240 Present-Absent
ABSENT = codes.cid240.Absent  # SCT 272519000
COMMENT = codes.DCM.Comment  # 121106, a TEXT item (OHIF shows it as a label)
# TID 1500 row 12: the report-level qualitative evaluations container
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# UCUM units
UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_MM = Code("mm", "UCUM", "millimeter")
UNIT_MM2 = Code("mm2", "UCUM", "square millimeter")
UNIT_HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_ONE = Code("1", "UCUM", "no units")
UNIT_SCORE = Code("{score}", "UCUM", "score")

# ---------------------------------------------------------------- private concepts
ABC2_VOLUME = private("ABC2_VOLUME", "ABC/2 volume")
HAEMORRHAGE_SITE = private("ICH_SITE", "Haemorrhage site class")
SITE_LOBAR = private("SITE_LOBAR", "Lobar")
SITE_DEEP = private("SITE_DEEP", "Deep")
SITE_INFRATENTORIAL = private("SITE_INFRATENT", "Infratentorial")
CORTICAL_INVOLVEMENT = private("CORTICAL_INVOLV", "Cortical involvement")
HE_RISK = private("HE_RISK", "Haematoma expansion risk")
PSE_RISK = private("PSE_RISK", "Post-stroke epilepsy risk")
CAVE_SCORE = private("CAVE_SCORE", "CAVE score")
TRAINING_DATA = private("TRAINING_DATA", "Model training data")
SYNTHETIC_DATA = private("SYNTHETIC_ONLY", "Fit on synthetic data")
# Quality checks (docs/qa.md): a warning on a result, and the report of a series not analysed
QA_WARNING = private("QA_WARNING", "Quality check warning")
QA_REPORT = private("QA_REPORT", "Haemorrhage analysis not performed")
NOT_ANALYSED = private("NOT_ANALYSED", "Not analysed")
QA_CHECK = private("QA_CHECK", "Quality check")
# The "not analysed" TID 1500 report: its report-level Qualitative Evaluations (TID 1500 row 12,
# a UMLS concept that pydicom's dictionary lacks) say that the analysis was not performed and why.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
IMAGING_MEASUREMENT_REPORT = codes.DCM.ImagingMeasurementReport  # 126000, CID 7021 title
ANALYSIS_PERFORMED = private("ICH_ANALYSED", "Haemorrhage analysis performed")
REASON_NOT_ANALYSED = private("NOT_ANALYSED_WHY", "Reason haemorrhage analysis not performed")
QA_FAILED = private("QA_FAILED", "Quality checks failed")
ABC2_A = private("ABC2_A", "ABC/2 largest diameter A")
ABC2_B = private("ABC2_B", "ABC/2 perpendicular diameter B")

SITES: Mapping[str, Code] = {
    "lobar": SITE_LOBAR,
    "deep": SITE_DEEP,
    "infratentorial": SITE_INFRATENTORIAL,
}


@dataclass(frozen=True)
class MarkerConcept:
    """How one key of ``Measurements.markers`` is written into the SR.

    ``kind`` is ``"numeric"`` (a measurement in ``unit``, value times ``scale``) or ``"flag"``
    (a qualitative evaluation, Yes or No). ``derivation`` (CID 7464) qualifies ``name``.
    """

    name: Code
    kind: str = "numeric"
    unit: Code = UNIT_ONE
    derivation: Code | None = None
    scale: float = 1.0


def _m(value: str, meaning: str, unit: Code = UNIT_ONE, *, scale: float = 1.0) -> MarkerConcept:
    return MarkerConcept(private(value, meaning), "numeric", unit, None, scale)


def _flag(value: str, meaning: str) -> MarkerConcept:
    return MarkerConcept(private(value, meaning), "flag")


# Markers from dicomnode.measure (docs/measurements.md) -> SR concepts. Keys not listed here
# (centroid coordinates, brain volume, the hypodense threshold) stay out of the SR.
MARKERS: Mapping[str, MarkerConcept] = {
    "hu_mean": MarkerConcept(ATTENUATION_COEFFICIENT, "numeric", UNIT_HU, MEAN),
    "hu_sd": MarkerConcept(ATTENUATION_COEFFICIENT, "numeric", UNIT_HU, STANDARD_DEVIATION),
    "hu_median": MarkerConcept(ATTENUATION_COEFFICIENT, "numeric", UNIT_HU, MEDIAN),
    "hu_p10": _m("HU_P10", "Attenuation 10th percentile", UNIT_HU),
    "hu_p90": _m("HU_P90", "Attenuation 90th percentile", UNIT_HU),
    "hu_cv": _m("HU_CV", "Attenuation coefficient of variation"),
    "hypodense_fraction": _m("HYPODENSE_FRAC", "Hypodense fraction", UNIT_PERCENT, scale=100.0),
    "hypodense_foci": _m("HYPODENSE_FOCI", "Number of hypodense foci"),
    "blend_sign_like": _flag("BLEND_SIGN", "Blend sign-like pattern"),
    "black_hole_like": _flag("BLACK_HOLE", "Black hole sign-like pattern"),
    "swirl_like": _flag("SWIRL_SIGN", "Swirl sign-like pattern"),
    "sphericity": _m("SPHERICITY", "Sphericity"),
    "solidity": _m("SOLIDITY", "Solidity"),
    "extent": _m("EXTENT", "Extent"),
    "elongation": _m("ELONGATION", "Elongation"),
    "flatness": _m("FLATNESS", "Flatness"),
    "surface_area_mm2": _m("SURFACE_AREA", "Surface area", UNIT_MM2),
    "convex_hull_volume_ml": _m("HULL_VOLUME", "Convex hull volume", UNIT_ML),
    "n_components": _m("N_COMPONENTS", "Number of connected components"),
    "n_satellites": _m("N_SATELLITES", "Number of satellite components"),
    "abc2_a_mm": MarkerConcept(ABC2_A, "numeric", UNIT_MM),
    "abc2_b_mm": MarkerConcept(ABC2_B, "numeric", UNIT_MM),
    "abc2_c_mm": _m("ABC2_C", "ABC/2 craniocaudal extent C", UNIT_MM),
    "largest_area_mm2": _m("LARGEST_AREA", "Largest axial area", UNIT_MM2),
    "centroid_depth_mm": _m("CENTROID_DEPTH", "Centroid depth below brain surface", UNIT_MM),
    "min_depth_mm": _m("MIN_DEPTH", "Minimum depth below brain surface", UNIT_MM),
    "midline_distance_mm": _m("MIDLINE_DIST", "Centroid distance from midline", UNIT_MM),
    "cortical_ribbon_overlap_ml": _m("RIBBON_OVERLAP", "Cortical ribbon overlap volume", UNIT_ML),
}


# ---------------------------------------------------------------- segments
@dataclass(frozen=True)
class SegmentConcept:
    """Codes, label and display colour of one canonical label value (PS3.3 C.8.20.2)."""

    label: str  # Segment Label (LO)
    category: Code
    property_type: Code
    anatomic_region: Code
    rgb: tuple[int, int, int]  # recommended display colour, written as CIELab

    @property
    def cielab(self) -> CIELabColor:
        return CIELabColor.from_rgb(*self.rgb)


SEGMENTS: Mapping[int, SegmentConcept] = {
    ICH: SegmentConcept("ICH", MORPHOLOGICALLY_ABNORMAL, HEMORRHAGE, BRAIN, (220, 20, 60)),
    IVH: SegmentConcept("IVH", MORPHOLOGICALLY_ABNORMAL, HEMORRHAGE, BRAIN_VENTRICLE, (30, 144, 255)),
    OEDEMA: SegmentConcept("Perihaematomal oedema", MORPHOLOGICALLY_ABNORMAL, EDEMA, BRAIN,
                           (255, 215, 0)),
    EXTRA_AXIAL: SegmentConcept("Extra-axial haemorrhage", MORPHOLOGICALLY_ABNORMAL, HEMORRHAGE,
                                MENINGES, (255, 0, 255)),
}


def segment_concept(label_value: int) -> SegmentConcept:
    """The concept of a canonical label value; ``ValueError`` for values dicomnode does not define."""
    try:
        return SEGMENTS[label_value]
    except KeyError:
        raise ValueError(
            f"label value {label_value!r} has no segment concept; known: {sorted(SEGMENTS)}"
        ) from None


def as_tuple(code: Any) -> tuple[str, str]:
    """(value, scheme designator) of a Code, CodedConcept or code sequence item, for comparisons."""
    if isinstance(code, Code) or hasattr(code, "scheme_designator"):
        return (str(code.value), str(code.scheme_designator))
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    return (str(value), str(code.CodingSchemeDesignator))


# ---------------------------------------------------------------- follow-up comparison
# TID 1500 row 12: the report's Qualitative Evaluations container; TID 1502 time points.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
TIME_POINT_BASELINE = codes.cid6146.Baseline  # C1442488 UMLS, CID 6146
UNIT_HOUR = Code("h", "UCUM", "hour")
PRIOR_SERIES = private("PRIOR_SERIES", "Prior series compared with")
INTERVAL = private("INTERVAL", "Interval since prior scan")
ICH_CHANGE = private("ICH_CHANGE", "ICH volume change")
ICH_CHANGE_PCT = private("ICH_CHANGE_PCT", "ICH volume relative change")
IVH_CHANGE = private("IVH_CHANGE", "IVH volume change")
NEW_IVH = private("NEW_IVH", "New intraventricular haemorrhage")
HE_OBSERVED = private("HE_OBSERVED", "Haematoma expansion")
HE_DEFINITION = private("HE_DEFINITION", "Haematoma expansion definition")
REGISTRATION_TRUSTED = private("REG_TRUSTED", "Registration trusted")
REGISTRATION_NOTE = private("REG_NOTE", "Registration note")
