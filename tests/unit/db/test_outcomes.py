"""The learning loop's records on SQLite and PostgreSQL: a finished job's features and risks, its
baseline's expansion, and the cases read back per baseline with what was left out."""

from __future__ import annotations

import math
from pathlib import Path

from sqlalchemy import func, select

from dicomnode.db.models import ClinicalOutcome, ExpansionOutcome, Series, SeriesPrediction, Study
from dicomnode.db.outcomes import department_cases, record_analysis
from dicomnode.db.session import SessionFactory, make_sessions
from dicomnode.domain import Comparison, Prediction, Registration, Risk


def _prediction(he: float, volume_ml: float) -> Prediction:
    return Prediction(expansion=Risk(he, "he-test", "3", True), epilepsy=Risk(0.1, "pse-test", "1", True),
                      features={"m_ich_volume_ml": volume_ml, "clin_gcs": math.nan, "img_0": 0.25})


def _comparison(prior: str, *, growth_ml: float, trusted: bool = True) -> Comparison:
    return Comparison(
        prior_series_instance_uid=prior, prior_study_datetime="2025-03-14T09:00:00",
        interval_h=24.0, prior_ich_volume_ml=20.0, ich_volume_ml=20.0 + growth_ml,
        ich_change_ml=growth_ml, ich_change_pct=100 * growth_ml / 20.0, prior_ivh_volume_ml=0.0,
        ivh_volume_ml=0.0, ivh_change_ml=0.0, prior_oedema_volume_ml=0.0, oedema_volume_ml=0.0,
        oedema_change_ml=0.0, new_ivh=False, expansion=growth_ml > 6.0,
        definition="growth > 6 mL or > 33 %",
        registration=Registration(-0.5, 0.97 if trusted else 0.7, trusted),
        prior_he_probability=0.4)


def _department(sessions: SessionFactory) -> None:
    """Patient A: baseline A0 (study 1, with a second series A0b), follow-ups A1 (trusted, grown
    9 mL) and A2 (untrusted); patient B: baseline B0 with an imported seizure outcome only;
    patient C: C0 with no outcome."""
    with sessions.begin() as s:
        for sid, uid, pid, acc in ((1, "1.2.1", "A", "ACC-A0"), (2, "1.2.2", "A", "ACC-A1"),
                                   (3, "1.2.3", "A", "ACC-A2"), (4, "1.2.4", "B", "ACC-B0"),
                                   (5, "1.2.5", "C", "ACC-C0")):
            s.add(Study(id=sid, study_instance_uid=uid, patient_id=pid, accession_number=acc))
        s.flush()
        for series_id, study_id, uid in ((1, 1, "A0"), (2, 1, "A0b"), (3, 2, "A1"), (4, 3, "A2"),
                                         (5, 4, "B0"), (6, 5, "C0")):
            s.add(Series(id=series_id, study_id=study_id, series_instance_uid=f"1.3.{uid}"))
        s.add(ClinicalOutcome(key_kind="accession_number", key="ACC-B0", outcome="pse",
                              value=True, source="x.csv line 2"))
        s.add(ClinicalOutcome(key_kind="study_instance_uid", key="1.2.1", outcome="pse",
                              value=False, source="x.csv line 3"))
    for uid, comparisons in (("A0", []), ("A0b", []), ("B0", []), ("C0", [])):
        with sessions.begin() as s:
            record_analysis(s, f"1.3.{uid}", 1, _prediction(0.4, 20.0), comparisons)
    with sessions.begin() as s:
        record_analysis(s, "1.3.A1", 1, _prediction(0.5, 29.0),
                        [_comparison("1.3.A0", growth_ml=9.0)])
        record_analysis(s, "1.3.A2", 1, _prediction(0.5, 20.5),
                        [_comparison("1.3.A0", growth_ml=0.5, trusted=False)])


def test_records_and_cases(db_url: str) -> None:
    sessions = make_sessions(db_url)
    try:
        _department(sessions)
        with sessions.begin() as s:  # a new version of A1: the same rows, replaced
            record_analysis(s, "1.3.A1", 2, _prediction(0.55, 29.5),
                            [_comparison("1.3.A0", growth_ml=9.5)])
            record_analysis(s, "1.3.unknown", 1, _prediction(0.5, 1.0), [])  # no such series
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(SeriesPrediction)) == 6
            rows = list(s.scalars(select(ExpansionOutcome).order_by(ExpansionOutcome.id)))
            a1 = s.get(SeriesPrediction, 3)
        assert len(rows) == 2 and rows[0].ich_change_ml == 9.5 and rows[0].expansion is True
        assert (rows[0].he_probability, rows[0].he_model, rows[0].he_model_version) == (
            0.4, "he-test", "3")
        assert rows[1].registration_trusted is False
        assert a1 is not None and a1.version == 2 and a1.he_probability == 0.55
        assert a1.features == {"m_ich_volume_ml": 29.5, "clin_gcs": None, "img_0": 0.25}

        found = department_cases(sessions)
        by_uid = {c.series_instance_uid: c for c in found.cases}
        assert set(by_uid) == {"1.3.A0", "1.3.B0"}
        a0, b0 = by_uid["1.3.A0"], by_uid["1.3.B0"]
        assert a0.outcomes == {"he": True, "pse": False}  # the untrusted follow-up is left out
        assert (a0.followups, a0.untrusted_followups) == (1, 1)
        assert a0.patient_id == "A" and a0.accession_number == "ACC-A0"
        assert math.isnan(a0.features["clin_gcs"]) and a0.features["img_0"] == 0.25
        assert a0.predictions["he_model"] == "he-test" and a0.predictions["pse_probability"] == 0.1
        assert b0.outcomes == {"pse": True} and b0.followups == 0
        assert found.left_out == {"follow-up scans": 2, "no outcome": 1,
                                  "another series of the same study": 1}
    finally:
        sessions.kw["bind"].dispose()


def test_the_series_a_followup_was_compared_with_is_the_case_of_its_study(tmp_path: Path) -> None:
    sessions = make_sessions(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with sessions.begin() as s:
            s.add_all([Study(id=1, study_instance_uid="1.2.1", patient_id="D"),
                       Study(id=2, study_instance_uid="1.2.2", patient_id="D")])
            s.flush()
            s.add_all([Series(id=1, study_id=1, series_instance_uid="1.3.thick"),
                       Series(id=2, study_id=1, series_instance_uid="1.3.thin"),
                       Series(id=3, study_id=2, series_instance_uid="1.3.followup")])
        with sessions.begin() as s:
            for uid in ("1.3.thick", "1.3.thin"):
                record_analysis(s, uid, 1, _prediction(0.3, 20.0), [])
            record_analysis(s, "1.3.followup", 1, _prediction(0.3, 22.0),
                            [_comparison("1.3.thin", growth_ml=2.0)])
        found = department_cases(sessions)
        assert [c.series_instance_uid for c in found.cases] == ["1.3.thin"]
        assert found.cases[0].outcomes == {"he": False}
        assert found.left_out["another series of the same study"] == 1
    finally:
        sessions.kw["bind"].dispose()
