"""`dicomnode outcomes import FILE.csv`: clinical outcomes keyed by accession number or Study
Instance UID, checked row by row and recorded all or nothing (docs/prediction.md, learning
loop).

Inputs: a CSV file with a header. Key columns: ``accession_number`` and/or
``study_instance_uid`` (when a row has both, the Study Instance UID is its key). Outcome
columns (see :data:`OUTCOME_COLUMNS`): yes/no, true/false, 1/0 or y/n; an empty cell is
"unknown" and records nothing. Other columns are ignored and named in the report.
Outputs: :class:`ImportReport`. Side effects: ``clinical_outcomes`` rows, inserted or updated
in one transaction, and only when no row has an error; importing a file again changes nothing.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import RE_VALID_UID
from sqlalchemy import select

from dicomnode.db.models import ClinicalOutcome, Study, utcnow
from dicomnode.db.session import SessionFactory

#: Outcome column names (lower case) -> the outcome they record. ``pse``: a seizure (post-stroke
#: epilepsy) within one year; ``he``: haematoma expansion known from elsewhere (a follow-up the
#: node measured takes precedence).
OUTCOME_COLUMNS = {
    "pse": "pse", "seizure_1y": "pse", "seizure_within_1y": "pse", "late_seizure": "pse",
    "epilepsy": "pse", "he": "he", "expansion": "he",
}
KEY_COLUMNS = {"accession_number": "accession_number", "accessionnumber": "accession_number",
               "accession": "accession_number", "study_instance_uid": "study_instance_uid",
               "studyinstanceuid": "study_instance_uid", "study_uid": "study_instance_uid"}
YES, NO = frozenset({"yes", "y", "true", "1"}), frozenset({"no", "n", "false", "0"})
ACCESSION_MAX = 16  # AccessionNumber is SH (PS3.5 6.2)


@dataclass
class ImportReport:
    """What an import did, or would have done; nothing is written when ``errors`` is not empty."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    unknown: int = 0  # empty outcome cells
    unmatched: int = 0  # keys of no study the node has (recorded; used once it has one)
    errors: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Value:
    key_kind: str
    key: str
    outcome: str
    value: bool
    source: str


def _key(row: dict[str, str], columns: dict[str, str]) -> tuple[str, str] | str:
    """(key kind, key) of a row, or the error text."""
    found = {columns[c]: (row.get(c) or "").strip() for c in columns}
    uid, accession = found.get("study_instance_uid", ""), found.get("accession_number", "")
    if uid:
        if len(uid) > 64 or not re.match(RE_VALID_UID, uid):  # PS3.5 9.1
            return f"study_instance_uid {uid!r} is not a valid UID (digits and dots, at most 64)"
        return "study_instance_uid", uid
    if accession:
        if len(accession) > ACCESSION_MAX or "\\" in accession:
            return (f"accession_number {accession!r} is not a valid accession number (at most "
                    f"{ACCESSION_MAX} characters, no backslash)")
        return "accession_number", accession
    return "no key: give accession_number or study_instance_uid"


def read_outcomes(path: Path, report: ImportReport) -> list[_Value]:
    """The outcome values of ``path``; problems go to ``report.errors`` (one line per row)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        keys = {h: KEY_COLUMNS[h.lower()] for h in header if h.lower() in KEY_COLUMNS}
        outcomes = {h: OUTCOME_COLUMNS[h.lower()] for h in header if h.lower() in OUTCOME_COLUMNS}
        report.ignored_columns = [h for h in header if h not in keys and h not in outcomes]
        if not keys:
            report.errors.append(f"{path.name}: no key column (accession_number or "
                                 "study_instance_uid)")
        if not outcomes:
            report.errors.append(f"{path.name}: no outcome column (one of "
                                 f"{', '.join(sorted(OUTCOME_COLUMNS))})")
        if report.errors:
            return []
        values: list[_Value] = []
        first: dict[tuple[str, str, str], tuple[int, bool]] = {}
        for n, row in enumerate(reader, start=2):  # line 1 is the header
            values += _row_values(path.name, n, row, keys, outcomes, first, report)
        if not values and not report.errors:
            report.errors.append(f"{path.name}: no outcome values")
        return values


def _row_values(name: str, n: int, row: dict[str, str], keys: dict[str, str],
                outcomes: dict[str, str], first: dict[tuple[str, str, str], tuple[int, bool]],
                report: ImportReport) -> list[_Value]:
    key = _key(row, keys)
    if isinstance(key, str):
        report.errors.append(f"{name} line {n}: {key}")
        return []
    out = []
    for column, outcome in outcomes.items():
        text = (row.get(column) or "").strip().lower()
        if not text:
            report.unknown += 1
            continue
        if text not in YES | NO:
            report.errors.append(f"{name} line {n}: {column} {row.get(column)!r} is not yes/no "
                                 "(yes, no, true, false, 1, 0, y, n; empty: unknown)")
            continue
        value = text in YES
        before = first.setdefault((*key, outcome), (n, value))
        if before[1] != value:
            report.errors.append(f"{name} line {n}: {outcome} of {key[0]} {key[1]} contradicts "
                                 f"line {before[0]}")
            continue
        if before[0] == n:
            out.append(_Value(*key, outcome, value, f"{name} line {n}"))
    return out


def import_outcomes(sessions: SessionFactory, path: Path) -> ImportReport:
    """Check every row of ``path``, then record them all in one transaction (or none)."""
    report = ImportReport()
    try:
        values = read_outcomes(Path(path), report)
    except UnicodeDecodeError as exc:
        report.errors.append(f"{Path(path).name}: not UTF-8 text ({exc.reason} at byte "
                             f"{exc.start}): save it as CSV UTF-8")
    if report.errors:
        return report
    with sessions.begin() as session:
        known = {("accession_number", a) for a in session.scalars(select(Study.accession_number))}
        known |= {("study_instance_uid", u) for u in session.scalars(select(Study.study_instance_uid))}
        existing = {(o.key_kind, o.key, o.outcome): o for o in session.scalars(
            select(ClinicalOutcome))}
        for v in values:
            report.unmatched += (v.key_kind, v.key) not in known
            row = existing.get((v.key_kind, v.key, v.outcome))
            if row is None:
                session.add(ClinicalOutcome(key_kind=v.key_kind, key=v.key, outcome=v.outcome,
                                            value=v.value, source=v.source))
                report.inserted += 1
            elif row.value != v.value:
                row.value, row.source, row.updated_at = v.value, v.source, utcnow()
                report.updated += 1
            else:
                report.unchanged += 1
    return report
