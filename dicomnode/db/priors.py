"""The earlier series of a series' patient, as follow-up comparison needs them (``serve``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dicomnode.db.models import Instance, Job, Series, Study
from dicomnode.db.session import SessionFactory


@dataclass(frozen=True)
class StoredSeries:
    """A received series: header attributes, its latest job's state and result folder."""

    series_instance_uid: str
    attributes: dict[str, Any]
    job_state: str  # "" when it has no job (rejected, still receiving)
    results: Path | None  # absolute, from the latest job's outputs
    paths: tuple[Path, ...]


def _attributes(series: Series, study: Study) -> dict[str, Any]:
    attrs = dict(series.attributes or {})
    if not attrs.get("patient_id") and study.patient_id:  # series received before 0.x
        attrs["patient_id"] = study.patient_id
    return attrs


def patient_series(sessions: SessionFactory, series_uid: str,
                   storage_root: Path) -> tuple[dict[str, Any], list[StoredSeries]]:
    """The attributes of ``series_uid`` and every other series with its Patient ID."""
    with sessions() as session:
        row = session.execute(select(Series, Study).join(Study, Series.study_id == Study.id)
                              .where(Series.series_instance_uid == series_uid)).first()
        if row is None:
            return {}, []
        current = _attributes(row[0], row[1])
        pid = current.get("patient_id") or ""
        if not pid:
            return current, []
        found = []
        for series, study in session.execute(
                select(Series, Study).join(Study, Series.study_id == Study.id)
                .where(Study.patient_id == pid, Series.series_instance_uid != series_uid)):
            job = session.scalars(select(Job).where(Job.series_id == series.id)
                                  .order_by(Job.version.desc()).limit(1)).first()
            out = (job.outputs or {}).get("dir") if job is not None else None
            paths = tuple(storage_root / p for p in session.scalars(
                select(Instance.path).where(Instance.series_id == series.id).order_by(Instance.id)))
            found.append(StoredSeries(series.series_instance_uid, _attributes(series, study),
                                      job.state if job is not None else "",
                                      storage_root / out if out else None, paths))
        return current, found
