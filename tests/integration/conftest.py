"""Integration fixtures: an outbox case (a job with output files) on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.sop_class import SegmentationStorage
from sqlalchemy import Engine

from dicomnode.config import Destination, Settings
from dicomnode.db.models import Job, Series, Study
from dicomnode.db.session import SessionFactory, make_sessions
from tests.conftest import make_settings
from tests.ct_series import make_series


def _job_with_outputs(settings: Settings, sessions: SessionFactory, ct_template: Dataset,
                      kinds: dict[str, int], seg_class: bool = True) -> tuple[int, list[dict]]:
    """A job row and output files under storage/_results (CT pixels stand in for the objects)."""
    with sessions.begin() as s:
        study = Study(study_instance_uid=generate_uid())
        s.add(study)
        s.flush()
        series = Series(series_instance_uid=generate_uid(), study_id=study.id, state="done")
        s.add(series)
        s.flush()
        job = Job(series_id=series.id, version=1, state="done")
        s.add(job)
        s.flush()
        job_id = job.id
    out_dir = settings.storage.path / "_results" / "x" / "v1"
    out_dir.mkdir(parents=True)
    items = []
    for kind, n in kinds.items():
        for ds in make_series(ct_template, n):
            if kind == "seg" and seg_class:
                ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SegmentationStorage
            path = out_dir / f"{kind}-{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            items.append({"kind": kind, "path": path.relative_to(settings.storage.path).as_posix(),
                          "sop_class_uid": str(ds.SOPClassUID),
                          "sop_instance_uid": str(ds.SOPInstanceUID)})
    with sessions.begin() as s:
        s.get(Job, job_id).outputs = {"items": items}
    return job_id, items


OutboxCase = Callable[..., tuple[Settings, SessionFactory, int, list[dict]]]


@pytest.fixture
def outbox_case(tmp_path: Path, ct_template: Dataset, db_url: str) -> Iterator[OutboxCase]:
    """``case(dest, kinds, **overrides)``: settings with one destination on the test's database,
    the sessions, and a job with output files; the engine is disposed afterwards."""
    engines: list[Engine] = []

    def case(dest: Destination, kinds: dict[str, int],
             **overrides: object) -> tuple[Settings, SessionFactory, int, list[dict]]:
        settings = make_settings(tmp_path / "storage", **{"destinations.add": [dest],
                                                          "database.url": db_url, **overrides})
        settings.storage.path.mkdir(parents=True)
        sessions = make_sessions(settings.database_url)
        engines.append(sessions.kw["bind"])
        job_id, items = _job_with_outputs(settings, sessions, ct_template, kinds)
        return settings, sessions, job_id, items

    yield case
    for engine in engines:
        engine.dispose()
