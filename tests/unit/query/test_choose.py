"""Which PACS study and series become a follow-up's prior: the window, the order, and the
node's eligibility rules applied to series-level C-FIND answers (``pacs_priors.series_reason``).
"""

from __future__ import annotations

from datetime import datetime

import pytest

from dicomnode.config import EligibilitySettings
from dicomnode.pacs_priors import series_reason
from dicomnode.query import SeriesMatch, StudyMatch, candidate_studies, choose_series, study_datetime

RULES = EligibilitySettings()
FOLLOW_UP = datetime(2024, 4, 17, 10, 0)


def _series(uid: str, n: int | None, **attrs: object) -> SeriesMatch:
    return SeriesMatch(uid, n, {"modality": "CT", "study_description": "CT HEAD", **attrs})


# A head CT study as a PACS lists it (keys as the series-level C-FIND answer gives them).
STUDY = [
    _series("1.1", 2, series_description="Topogram 0.6 T20s",
            image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
    _series("1.2", 32, series_description="Head 5mm H30s", kernel="H30s",
            image_type=["ORIGINAL", "PRIMARY", "AXIAL"], slice_thickness_mm=5.0),
    _series("1.3", 32, series_description="Head 5mm H70h", kernel="H70h",
            image_type=["ORIGINAL", "PRIMARY", "AXIAL"], slice_thickness_mm=5.0),
    _series("1.4", 220, series_description="Head 0.75mm H30s", kernel="H30s",
            image_type=["ORIGINAL", "PRIMARY", "AXIAL"], slice_thickness_mm=0.75),
    _series("1.5", 40, series_description="Head COR 3mm",
            image_type=["DERIVED", "SECONDARY", "MPR"], slice_thickness_mm=3.0),
    _series("1.6", 300, series_description="CTA Willis", slice_thickness_mm=1.0),
    _series("1.7", 1, modality="SR", series_description="Dose Report"),
    _series("1.8", 30, series_description="Schaedel nativ"),  # no image type, no thickness
]


def _choose(series: list[SeriesMatch], *, thickness_mm: float | None,
            max_instances: int = 600) -> tuple[SeriesMatch | None, list[str]]:
    return choose_series(series, lambda s: series_reason(s, series, RULES),
                         max_instances=max_instances, thickness_mm=thickness_mm)


def test_the_axial_soft_tissue_series_nearest_the_followups_thickness_is_chosen() -> None:
    chosen, notes = _choose(STUDY, thickness_mm=5.0)
    assert chosen is not None and chosen.series_instance_uid == "1.2"
    why = dict(n.split(": ", 1) for n in notes)
    assert set(why) == {"1.1", "1.3", "1.5", "1.6", "1.7"}
    assert "localizer" in why["1.1"]
    assert "bone kernel" in why["1.3"] and "soft-tissue series" in why["1.3"]
    assert "DERIVED" in why["1.5"]
    assert why["1.6"].startswith("contrast:")
    assert why["1.7"].startswith("modality SR")


def test_a_thin_followup_gets_the_thin_prior_unless_it_is_over_the_limit() -> None:
    chosen, _ = _choose(STUDY, thickness_mm=0.75)
    assert chosen is not None and chosen.series_instance_uid == "1.4"
    chosen, notes = _choose(STUDY, thickness_mm=0.75, max_instances=100)
    assert chosen is not None and chosen.series_instance_uid == "1.2"
    assert any(n.startswith("1.4: 220 instances, more than the limit of 100") for n in notes)


def test_missing_keys_are_not_held_against_a_series_and_known_ones_rank_first() -> None:
    only_unknown = [s for s in STUDY if s.series_instance_uid in ("1.1", "1.8")]
    chosen, _ = _choose(only_unknown, thickness_mm=5.0)
    assert chosen is not None and chosen.series_instance_uid == "1.8"
    chosen, _ = _choose([STUDY[7], STUDY[1]], thickness_mm=None)
    assert chosen is not None and chosen.series_instance_uid == "1.2"  # its thickness is known


def test_no_eligible_series_gives_none_and_every_reason() -> None:
    chest = _series("2.1", 300, series_description="Thorax 1mm", body_part="CHEST",
                    study_description="CT THORAX", image_type=["ORIGINAL", "PRIMARY", "AXIAL"],
                    slice_thickness_mm=1.0)
    few = _series("2.2", 4, series_description="Head 5mm", body_part="HEAD")
    chosen, notes = _choose([chest, few], thickness_mm=5.0)
    assert chosen is None
    assert notes == ["2.1: body part CHEST and descriptions do not name a head",
                     "2.2: 4 instances, fewer than 10"]


def _study(uid: str, date: str, time: str = "") -> StudyMatch:
    return StudyMatch(uid, {"study_date": date, "study_time": time} if date else {})


def test_studies_in_the_window_latest_first_without_the_followups_own() -> None:
    studies = [_study("own", "20240417", "100000"), _study("too-recent", "20240417", "093000"),
               _study("day-before", "20240416", "080000"), _study("week-before", "20240410"),
               _study("too-old", "20240301", "120000"), _study("undated", ""),
               _study("same-day-earlier", "20240417", "073000.25")]
    found = candidate_studies(studies, before=FOLLOW_UP, min_interval_h=1.0,
                              max_interval_h=336.0, exclude={"own"})
    assert [s.study_instance_uid for s in found] == ["same-day-earlier", "day-before",
                                                     "week-before"]


@pytest.mark.parametrize(("date", "time", "expected"), [
    ("20240416", "083000.123", datetime(2024, 4, 16, 8, 30, 0, 123000)),
    ("20240416", "", datetime(2024, 4, 16)),
    ("20240416", "0830", datetime(2024, 4, 16, 8, 30)),
    ("2024041", "", None),
    ("", "083000", None),
])
def test_study_datetime(date: str, time: str, expected: datetime | None) -> None:
    assert study_datetime({"study_date": date, "study_time": time}) == expected
