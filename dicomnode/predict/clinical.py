"""Clinical variables: a CSV or JSON sidecar keyed by accession number or StudyInstanceUID.

Inputs: a sidecar file (format in docs/prediction.md "Clinical variables") or any mapping of
clinical values. Outputs: ``clin_*`` features as floats, missing values NaN. Side effects: none.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLINICAL_VARIABLES",
    "MISSING_TOKENS",
    "ClinicalTable",
    "clinical_features",
    "normalise_name",
    "parse_value",
    "read_clinical",
]

log = logging.getLogger(__name__)

#: Strings read as a missing value (case-insensitive, surrounding spaces ignored).
MISSING_TOKENS = frozenset(
    {"", "na", "n/a", "nan", "null", "none", "unknown", "unk", "missing", "not known", "-", "?", "."}
)
_TRUE = frozenset({"1", "true", "t", "yes", "y", "present", "positive", "pos"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "absent", "negative", "neg"})
_MALE = frozenset({"m", "male"})
_FEMALE = frozenset({"f", "female"})

#: Known variables (name -> unit or meaning). They are always present in ``clinical_features``
#: (NaN when missing) so that every study gives the same names. The 15 of study E (docs/METHODS.md)
#: plus the admission variables of the synthetic cohorts.
CLINICAL_VARIABLES: Mapping[str, str] = {
    "age_y": "age, years",
    "sex_male": "1 male, 0 female",
    "sbp_mmhg": "systolic blood pressure at admission, mmHg",
    "dbp_mmhg": "diastolic blood pressure at admission, mmHg",
    "gcs": "Glasgow coma scale, 3-15",
    "onset_to_ct_h": "symptom onset (or last seen well) to baseline CT, hours",
    "anticoagulation": "oral anticoagulant at onset, 0/1",
    "antiplatelet": "antiplatelet drug at onset, 0/1",
    "hypertension": "history of hypertension, 0/1",
    "heart_disease": "history of heart disease, 0/1",
    "diabetes": "diabetes mellitus, 0/1",
    "adl_index": "activities of daily living (Barthel) index",
    "platelets_1e9_per_l": "platelet count, 10^9/L",
    "neutrophils_1e9_per_l": "neutrophil count, 10^9/L",
    "neutrophil_pct": "neutrophils, % of white cells",
    "d_dimer_mg_per_l": "D-dimer, mg/L FEU",
    "fibrinogen_g_per_l": "fibrinogen, g/L",
    "prothrombin_time_s": "prothrombin time, s",
    "inr": "international normalised ratio",
    "early_seizure": "seizure within 7 days of the ICH, 0/1 (unknown at admission)",
}
#: Alternative column names accepted for the known variables (after ``normalise_name``).
ALIASES: Mapping[str, str] = {
    "age": "age_y",
    "sex": "sex_male",
    "gender": "sex_male",
    "male": "sex_male",
    "sbp": "sbp_mmhg",
    "systolic_bp": "sbp_mmhg",
    "dbp": "dbp_mmhg",
    "diastolic_bp": "dbp_mmhg",
    "onset_to_ct": "onset_to_ct_h",
    "anticoagulant": "anticoagulation",
    "oac": "anticoagulation",
    "platelets": "platelets_1e9_per_l",
    "platelet_count": "platelets_1e9_per_l",
    "neutrophils": "neutrophils_1e9_per_l",
    "d_dimer": "d_dimer_mg_per_l",
    "fibrinogen": "fibrinogen_g_per_l",
    "pt": "prothrombin_time_s",
    "prothrombin_time": "prothrombin_time_s",
    "seizure_7d": "early_seizure",
}
#: Key columns of a sidecar (after ``normalise_name``).
KEY_COLUMNS = ("accession_number", "study_instance_uid")
_KEY_ALIASES = {
    "accession": "accession_number",
    "accessionnumber": "accession_number",
    "studyinstanceuid": "study_instance_uid",
    "study_uid": "study_instance_uid",
}


def normalise_name(name: str) -> str:
    """Lower case; runs of anything but letters and digits become one underscore."""
    out = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    if not out:
        raise ValueError(f"empty clinical variable name {name!r}")
    return out


def parse_value(value: Any, *, name: str = "") -> float:
    """One clinical value as a float: numbers, booleans (yes/no, true/false, 1/0) and, for
    ``sex_male``, M/F; missing tokens (``MISSING_TOKENS``), None and NaN give NaN.

    Raises ``ValueError`` for any other text (the caller decides to drop the column).
    """
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        v = float(value)
        return v if math.isfinite(v) else math.nan
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar
        return parse_value(value.item(), name=name)
    text = str(value).strip().lower()
    if text in MISSING_TOKENS:
        return math.nan
    if name == "sex_male":
        if text in _MALE:
            return 1.0
        if text in _FEMALE:
            return 0.0
        if text in {"o", "other"}:
            return math.nan
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    try:
        v = float(text.replace(",", ".")) if text.count(",") == 1 and "." not in text else float(text)
    except ValueError:
        raise ValueError(
            f"clinical value {value!r} of {name or 'a variable'} is not numeric or boolean"
        ) from None
    return v if math.isfinite(v) else math.nan


def _canonical(name: str) -> str:
    n = normalise_name(name)
    return ALIASES.get(n, n)


def clinical_features(clinical: Mapping[str, Any] | None) -> dict[str, float]:
    """``clin_<name>`` floats: every known variable (NaN when absent or missing), then every
    other column whose value is numeric, boolean or missing; other text is dropped (logged).

    Names go through ``normalise_name`` and ``ALIASES`` (``Age`` -> ``clin_age_y``).
    """
    out = {f"clin_{k}": math.nan for k in CLINICAL_VARIABLES}
    if not clinical:
        return out
    for raw_name, value in clinical.items():
        name = _canonical(raw_name)
        if name in KEY_COLUMNS or _KEY_ALIASES.get(name) in KEY_COLUMNS:
            continue
        try:
            out[f"clin_{name}"] = parse_value(value, name=name)
        except ValueError as exc:
            if name in CLINICAL_VARIABLES:
                log.warning("%s: set to NaN", exc)
            else:
                log.debug("clinical column %s dropped: %s", raw_name, exc)
    return out


@dataclass(frozen=True)
class ClinicalTable:
    """Rows of a sidecar, by accession number and by StudyInstanceUID (raw values kept)."""

    path: Path | None
    by_accession: Mapping[str, Mapping[str, Any]]
    by_study_uid: Mapping[str, Mapping[str, Any]]

    def __len__(self) -> int:
        return len({id(r) for r in (*self.by_accession.values(), *self.by_study_uid.values())})

    def lookup(
        self, *, accession_number: str | None = None, study_instance_uid: str | None = None
    ) -> Mapping[str, Any] | None:
        """The row of a study (StudyInstanceUID first, then accession number), or None."""
        if study_instance_uid and study_instance_uid.strip() in self.by_study_uid:
            return self.by_study_uid[study_instance_uid.strip()]
        if accession_number and accession_number.strip() in self.by_accession:
            return self.by_accession[accession_number.strip()]
        return None

    def features(
        self, *, accession_number: str | None = None, study_instance_uid: str | None = None
    ) -> dict[str, float]:
        """``clinical_features`` of the study's row (all NaN when the study is not listed)."""
        return clinical_features(
            self.lookup(accession_number=accession_number, study_instance_uid=study_instance_uid)
        )


def _rows_from_json(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, list):
        rows = data
    elif isinstance(data, dict):
        # {"<key>": {...}, ...}: the key is a StudyInstanceUID when it looks like a UID.
        rows = []
        for key, row in data.items():
            if not isinstance(row, dict):
                raise ValueError(f"{path}: entry {key!r} is not an object")
            col = "study_instance_uid" if re.fullmatch(r"[0-9]+(\.[0-9]+)+", key) else "accession_number"
            rows.append({col: key, **row})
    else:
        raise ValueError(f"{path}: expected a list of objects or an object of objects")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i} is not an object")
    return rows


def _index(rows: Iterable[Mapping[str, Any]], path: Path | None) -> ClinicalTable:
    by_acc: dict[str, dict[str, Any]] = {}
    by_uid: dict[str, dict[str, Any]] = {}
    for i, raw in enumerate(rows):
        row: dict[str, Any] = {}
        for k, v in raw.items():
            n = normalise_name(k)
            row[_KEY_ALIASES.get(n, n)] = v
        acc = str(row.get("accession_number") or "").strip()
        uid = str(row.get("study_instance_uid") or "").strip()
        if not acc and not uid:
            raise ValueError(f"{path}: row {i + 1} has neither accession_number nor study_instance_uid")
        for key, index, what in ((acc, by_acc, "accession_number"), (uid, by_uid, "study_instance_uid")):
            if key:
                if key in index:
                    raise ValueError(f"{path}: {what} {key!r} appears twice")
                index[key] = row
    return ClinicalTable(path=path, by_accession=by_acc, by_study_uid=by_uid)


def read_clinical(path: Path) -> ClinicalTable:
    """Read a clinical sidecar (``.csv`` or ``.json``); see docs/prediction.md.

    Raises ``ValueError`` naming the file for a row without a key, a duplicate key or a
    malformed JSON layout; values are parsed later, one study at a time.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        rows = _rows_from_json(json.loads(path.read_text(encoding="utf-8")), path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            delimiter = (
                "\t"
                if path.suffix.lower() == ".tsv"
                else (";" if sample.count(";") > sample.count(",") else ",")
            )
            rows = list(csv.DictReader(f, delimiter=delimiter))
    else:
        raise ValueError(f"{path}: clinical sidecar must be .csv, .tsv or .json")
    return _index(rows, path)
