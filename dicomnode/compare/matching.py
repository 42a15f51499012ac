"""Which scans are one patient's, in which order, and which earlier scans a follow-up is
compared with (series attributes as ``receive.checks.read_header`` records them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class ScanKey:
    """One analysed (or to be analysed) scan: its series, patient and acquisition time."""

    series_instance_uid: str
    patient: tuple[str, ...]  # ``patient_key``; () when the series has no Patient ID
    acquired: datetime | None


def patient_key(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """Patient ID, plus the issuer when present, plus birth date and sex when both are given.

    Empty when the Patient ID is: such a series is never matched to another.
    """
    pid = str(attrs.get("patient_id") or "").strip()
    if not pid:
        return ()
    key = [pid, str(attrs.get("issuer_of_patient_id") or "").strip()]
    birth = str(attrs.get("patient_birth_date") or "").strip()
    sex = str(attrs.get("patient_sex") or "").strip().upper()
    key += [birth, sex] if birth and sex else ["", ""]
    return tuple(key)


def same_patient(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Same Patient ID; issuer, birth date and sex must agree where both carry them."""
    if not a or not b or a[0] != b[0]:
        return False
    return all(not x or not y or x == y for x, y in zip(a[1:], b[1:], strict=True))


def _parse(date: str, time: str = "") -> datetime | None:
    """A DICOM DA (+ TM) or DT value as a naive datetime (offsets dropped); None if unusable."""
    date, time = date.strip(), time.strip()
    if len(date) > 8:  # DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX
        date, time = date[:8], date[8:].split("+")[0].split("-")[0]
    if len(date) != 8 or not date.isdigit():
        return None
    whole, _, frac = time.partition(".")
    whole = (whole + "000000")[:6] if whole.isdigit() else "000000"
    try:
        value = datetime.strptime(date + whole, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    digits = (frac + "000000")[:6]
    return value.replace(microsecond=int(digits)) if digits.isdigit() else value


def scan_datetime(attrs: Mapping[str, Any]) -> datetime | None:
    """When the scan was made: Acquisition, else Series, else Study date/time."""
    candidates = ((attrs.get("acquisition_datetime"), ""),
                  (attrs.get("acquisition_date"), attrs.get("acquisition_time")),
                  (attrs.get("series_date"), attrs.get("series_time")),
                  (attrs.get("study_date"), attrs.get("study_time")))
    for date, time in candidates:
        value = _parse(str(date or ""), str(time or ""))
        if value is not None:
            return value
    return None


def in_order(scans: Sequence[ScanKey]) -> list[ScanKey]:
    """Scans in acquisition order (unknown times last, then by Series Instance UID)."""
    return sorted(scans, key=lambda s: (s.acquired is None, s.acquired or datetime.min,
                                        s.series_instance_uid))


def choose_priors(current: ScanKey, earlier: Sequence[ScanKey], *, min_interval_h: float,
                  max_interval_h: float) -> list[ScanKey]:
    """The patient's scans acquired ``min_interval_h``..``max_interval_h`` before ``current``,
    oldest first: the first is the baseline, the last the most recent prior."""
    if current.acquired is None or not current.patient:
        return []
    lo, hi = timedelta(hours=min_interval_h), timedelta(hours=max_interval_h)
    found = [s for s in earlier if s.acquired is not None and same_patient(s.patient, current.patient)
             and s.series_instance_uid != current.series_instance_uid
             and s.acquired < current.acquired  # strictly earlier: never each other's prior
             and lo <= current.acquired - s.acquired <= hi]
    return in_order(found)
