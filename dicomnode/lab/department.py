"""The department's own cohort: the node's recorded outcomes as a feature cohort.

Inputs: :func:`dicomnode.db.outcomes.department_cases` (the analysed baselines, their features,
measured expansion and imported outcomes). Outputs: the rows of a feature cohort
(:mod:`dicomnode.lab.feature_cohort`) and, for ``dicomnode cohort export``, the folder. Side
effects: :func:`export_cohort` writes the folder (and makes the install's pseudonym key on
first use).

Pseudonyms are keyed hashes (HMAC-SHA-256 with the install's secret, ``<storage>/.pseudonym-key``
by default): the same patient gets the same pseudonym in every export of this install, and
nobody without the key can tell who it is. No patient name is ever read; with
``keep_identifiers`` the export holds Patient ID, accession number and UIDs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicomnode import __version__
from dicomnode.db.outcomes import DepartmentCase, DepartmentCases, department_cases
from dicomnode.db.session import SessionFactory
from dicomnode.lab.cohort_table import CohortTable
from dicomnode.lab.feature_cohort import OUTCOMES, read_feature_cohort, write_feature_cohort
from dicomnode.storage import pseudonym_key

__all__ = ["CohortRows", "cohort_rows", "department_table", "export_cohort", "pseudonymiser"]

Pseudonym = Callable[[str, str], str]


def pseudonymiser(key: bytes) -> Pseudonym:
    """``f(kind, value)``: ``<kind>-<16 hex digits>``, a keyed hash of ``value``."""
    def pseudonym(kind: str, value: str) -> str:
        digest = hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()
        return f"{kind}-{digest[:16]}"
    return pseudonym


@dataclass
class CohortRows:
    """The rows of a feature cohort: ``cases.csv`` and ``features.csv``, in the same order."""

    cases: list[dict[str, Any]]
    features: list[dict[str, float]]
    meta: dict[str, Any]


def _case_row(c: DepartmentCase, pseudonym: Pseudonym | None) -> dict[str, Any]:
    if pseudonym is None:
        row: dict[str, Any] = {"case_id": c.series_instance_uid, "patient": c.patient_id,
                               "study_instance_uid": c.study_instance_uid,
                               "accession_number": c.accession_number}
    else:
        row = {"case_id": pseudonym("case", c.series_instance_uid),
               "patient": pseudonym("patient", c.patient_id or c.study_instance_uid)}
    row.update({t: c.outcomes.get(t) for t in OUTCOMES})
    row.update({"followups": c.followups, "untrusted_followups": c.untrusted_followups})
    row.update(c.predictions)
    return row


def cohort_rows(found: DepartmentCases, *, pseudonym: Pseudonym | None) -> CohortRows:
    """The feature cohort of ``found``; identifiers pseudonymised unless ``pseudonym`` is None."""
    cases = [_case_row(c, pseudonym) for c in found.cases]
    counts = {t: {"n": sum(c[t] is not None for c in cases),
                  "events": sum(c[t] is True for c in cases)} for t in OUTCOMES}
    meta = {
        "description": f"department cohort exported by dicomnode {__version__} on "
                       f"{datetime.now(UTC):%Y-%m-%d}: {len(cases)} analysed baseline studies of "
                       f"{len({c['patient'] for c in cases})} patients",
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dicomnode": __version__, "synthetic": False,
        "pseudonymised": pseudonym is not None,
        "outcomes": counts,
        "outcome_definitions": {
            "he": "1 when any follow-up with a trusted registration measured expansion by the "
                  "node's [followup] definition, 0 when none did; else an imported value",
            "pse": "imported (dicomnode outcomes import), e.g. a seizure within one year"},
        "left_out": dict(found.left_out),
    }
    return CohortRows(cases, [dict(c.features) for c in found.cases], meta)


def export_cohort(sessions: SessionFactory, out: Path, *, key_file: Path,
                  keep_identifiers: bool = False) -> CohortRows:
    """Write the department's feature cohort to ``out`` (pseudonymised unless asked)."""
    pseudonym = None if keep_identifiers else pseudonymiser(pseudonym_key(key_file))
    rows = cohort_rows(department_cases(sessions), pseudonym=pseudonym)
    if not rows.cases:
        raise ValueError("no analysed baseline has an outcome yet: follow-ups record expansion, "
                         "`dicomnode outcomes import` records clinical outcomes")
    write_feature_cohort(out, rows.cases, rows.features, rows.meta)
    return rows


def department_table(sessions: SessionFactory, scratch: Path) -> CohortTable:
    """The department's cohort as a table, written pseudonymised to ``scratch`` and read back
    the way ``dicomnode train`` reads an export (identifiers never leave the database)."""
    rows = cohort_rows(department_cases(sessions), pseudonym=pseudonymiser(os.urandom(32)))
    if not rows.cases:
        raise ValueError("no analysed baseline has an outcome yet")
    write_feature_cohort(scratch, rows.cases, rows.features, rows.meta)
    return read_feature_cohort(scratch)
