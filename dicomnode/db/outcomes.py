"""The learning loop's records (docs/prediction.md, learning loop): what each analysed series
was scored on, the expansion each follow-up measured on its baseline, and the clinical outcomes
the department imports; read back joined, one case per baseline study, for the lab (cohort
export, validation).

Inputs: a finished job's prediction and comparisons (written by the pipeline in the job's own
transaction). Outputs: rows of ``series_predictions`` and ``expansion_outcomes``;
:func:`department_cases`. Side effects: database writes in the caller's session.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.db.models import (
    ClinicalOutcome,
    ExpansionOutcome,
    Series,
    SeriesPrediction,
    Study,
    utcnow,
)
from dicomnode.db.session import SessionFactory
from dicomnode.domain import Comparison, Prediction, finite_or_none


def _series_id(session: Session, series_uid: str) -> int | None:
    return session.scalar(select(Series.id).where(Series.series_instance_uid == series_uid))


def record_analysis(session: Session, series_uid: str, version: int,
                    prediction: Prediction | None, comparisons: Sequence[Comparison]) -> None:
    """Record what ``series_uid`` was scored on and, when it is a follow-up, its baseline's
    measured expansion (``comparisons[0]``, against the earliest scan of the episode).

    Called again for a new version of the series, it replaces both (same keys).
    """
    series_id = _series_id(session, series_uid)
    if series_id is None:
        return
    if prediction is not None:
        row = session.get(SeriesPrediction, series_id) or SeriesPrediction(series_id=series_id)
        row.version, row.recorded_at = version, utcnow()
        row.features = {k: finite_or_none(v) for k, v in prediction.features.items()}
        for key, risk in (("he", prediction.expansion), ("pse", prediction.epilepsy)):
            setattr(row, f"{key}_probability", risk.probability if risk else None)
            setattr(row, f"{key}_model", risk.model if risk else "")
            setattr(row, f"{key}_model_version", risk.model_version if risk else "")
        session.add(row)
    if comparisons:
        _record_expansion(session, series_id, comparisons[0])


def _record_expansion(session: Session, followup_id: int, c: Comparison) -> None:
    baseline_id = _series_id(session, c.prior_series_instance_uid)
    if baseline_id is None:
        return
    row = session.scalar(select(ExpansionOutcome).where(
        ExpansionOutcome.baseline_series_id == baseline_id,
        ExpansionOutcome.followup_series_id == followup_id))
    if row is None:
        row = ExpansionOutcome(baseline_series_id=baseline_id, followup_series_id=followup_id)
    baseline = session.get(SeriesPrediction, baseline_id)
    row.interval_h, row.definition = c.interval_h, c.definition
    row.baseline_ich_volume_ml, row.followup_ich_volume_ml = c.prior_ich_volume_ml, c.ich_volume_ml
    row.ich_change_ml, row.ich_change_pct = c.ich_change_ml, c.ich_change_pct
    row.new_ivh, row.expansion = c.new_ivh, c.expansion
    row.registration_trusted = c.registration.trusted
    row.he_probability = c.prior_he_probability
    row.he_model = baseline.he_model if baseline is not None else ""
    row.he_model_version = baseline.he_model_version if baseline is not None else ""
    row.recorded_at = utcnow()
    session.add(row)


@dataclass(frozen=True)
class DepartmentCase:
    """One analysed baseline study with what is known of its outcomes (identifiers included:
    the lab pseudonymises them on export)."""

    series_instance_uid: str
    study_instance_uid: str
    accession_number: str
    patient_id: str
    features: dict[str, float]  # NaN where unknown
    outcomes: dict[str, bool]  # "he" (measured, else imported), "pse", ... (imported)
    predictions: dict[str, Any] = field(default_factory=dict)  # he_probability, he_model, ...
    followups: int = 0  # trusted follow-up comparisons behind ``outcomes["he"]``
    untrusted_followups: int = 0  # left out: the registration was not trusted


@dataclass
class DepartmentCases:
    """The cases with at least one outcome, and what was left out and why."""

    cases: list[DepartmentCase]
    left_out: dict[str, int] = field(default_factory=dict)


def department_cases(sessions: SessionFactory) -> DepartmentCases:
    """Every analysed baseline (a scored series that is nobody's follow-up; per study, the one
    a follow-up was compared with, else the first scored) with its measured expansion and
    imported outcomes.

    Expansion is yes when any trusted follow-up measured it, no when every trusted one did not;
    follow-ups whose registration was not trusted are left out. A case without any outcome is
    left out (counted in ``left_out``).
    """
    with sessions() as session:
        followup_ids = set(session.scalars(select(ExpansionOutcome.followup_series_id)))
        measured: dict[int, list[ExpansionOutcome]] = defaultdict(list)
        for e in session.scalars(select(ExpansionOutcome)):
            measured[e.baseline_series_id].append(e)
        clinical: dict[tuple[str, str], dict[str, bool]] = defaultdict(dict)
        for o in session.scalars(select(ClinicalOutcome)):
            clinical[(o.key_kind, o.key)][o.outcome] = bool(o.value)
        # Per study, a series some follow-up was compared with comes first, then the oldest.
        rows = sorted(session.execute(
            select(SeriesPrediction, Series, Study).join(Series, Series.id == SeriesPrediction.series_id)
            .join(Study, Study.id == Series.study_id)).all(),
            key=lambda r: (r[2].id, r[1].id not in measured, r[1].id))
        out = DepartmentCases([], {"follow-up scans": 0, "no outcome": 0,
                                   "another series of the same study": 0})
        seen_studies: set[int] = set()
        for pred, series, study in rows:
            if series.id in followup_ids:
                out.left_out["follow-up scans"] += 1
                continue
            if study.id in seen_studies:
                out.left_out["another series of the same study"] += 1
                continue
            seen_studies.add(study.id)
            case = _case(pred, series, study, measured.get(series.id, []), clinical)
            if not case.outcomes:
                out.left_out["no outcome"] += 1
                continue
            out.cases.append(case)
        return out


def _case(pred: SeriesPrediction, series: Series, study: Study,
          measured: Sequence[ExpansionOutcome],
          clinical: dict[tuple[str, str], dict[str, bool]]) -> DepartmentCase:
    outcomes: dict[str, bool] = {}
    for key in (("accession_number", study.accession_number or ""),
                ("study_instance_uid", study.study_instance_uid)):
        outcomes.update(clinical.get(key, {}))
    trusted = [e for e in measured if e.registration_trusted]
    if trusted:
        outcomes["he"] = any(e.expansion for e in trusted)
    predictions = {f"{k}_{f}": getattr(pred, f"{k}_{f}") for k in ("he", "pse")
                   for f in ("probability", "model", "model_version")}
    features = {k: (math.nan if v is None else float(v)) for k, v in (pred.features or {}).items()}
    return DepartmentCase(series.series_instance_uid, study.study_instance_uid,
                          study.accession_number or "", study.patient_id or "", features, outcomes,
                          predictions, len(trusted), len(measured) - len(trusted))
