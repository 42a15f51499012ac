"""Which of the PACS's studies and series is a follow-up's prior (pure functions, no network).

The study: dated ``min_interval_h``..``max_interval_h`` before the follow-up, the latest first.
The series: eligible by the node's rules (a callable the pipeline passes: the ``assemble``
rules), at most ``max_instances``, the slice thickness nearest the follow-up's, then a known
thickness, then the fewest instances (the cheapest to fetch and analyse).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydicom.valuerep import DA, TM

from dicomnode.query.scu import SeriesMatch, StudyMatch


def study_datetime(attrs: dict[str, Any]) -> datetime | None:
    """Study Date and Time (DA, TM) as a naive datetime; midnight without a time."""
    try:
        day = DA(str(attrs.get("study_date") or ""))
        clock = TM(str(attrs.get("study_time") or "")) if attrs.get("study_time") else None
    except ValueError:
        return None
    if day is None:
        return None
    return datetime.combine(day, clock.replace(tzinfo=None) if clock else datetime.min.time())


def candidate_studies(studies: Sequence[StudyMatch], *, before: datetime, min_interval_h: float,
                      max_interval_h: float, exclude: set[str]) -> list[StudyMatch]:
    """The studies dated in the window before ``before`` (not those in ``exclude``), latest
    first: the first is the most relevant prior."""
    lo, hi = timedelta(hours=min_interval_h), timedelta(hours=max_interval_h)
    dated = [(when, s) for s in studies if s.study_instance_uid not in exclude
             and (when := study_datetime(s.attributes)) is not None
             and lo <= before - when <= hi]
    return [s for _, s in sorted(dated, key=lambda p: (p[0], p[1].study_instance_uid),
                                 reverse=True)]


def choose_series(series: Sequence[SeriesMatch], reason: Callable[[SeriesMatch], str | None], *,
                  max_instances: int, thickness_mm: float | None = None
                  ) -> tuple[SeriesMatch | None, list[str]]:
    """The best eligible series of a study, and why each other series was passed over."""
    eligible: list[SeriesMatch] = []
    notes: list[str] = []
    for s in series:
        why = reason(s)
        if why is None and s.n_instances is not None and s.n_instances > max_instances:
            why = f"{s.n_instances} instances, more than the limit of {max_instances}"
        if why is None:
            eligible.append(s)
        else:
            notes.append(f"{s.series_instance_uid}: {why}")

    def rank(s: SeriesMatch) -> tuple[float, bool, int, str]:
        thickness = s.attributes.get("slice_thickness_mm")
        gap = abs(thickness - thickness_mm) if thickness is not None and thickness_mm else 1e9
        count = s.n_instances if s.n_instances is not None else 10**9
        return gap, thickness is None, count, s.series_instance_uid

    return (min(eligible, key=rank) if eligible else None), notes
