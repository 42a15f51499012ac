"""Scheduled tasks: retention deletes old received images of finished series only."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import func, select, update

from dicomnode.db.models import Instance, Series, utcnow
from dicomnode.db.session import make_sessions
from dicomnode.jobs.tasks import retention
from dicomnode.receive.instance_store import InstanceStore
from tests.ct_series import make_series
from tests.unit.receive.test_instance_store import put


def test_retention_removes_only_old_finished_series(tmp_path: Path, ct_template: Dataset,
                                                    db_url: str) -> None:
    store = InstanceStore(tmp_path / "s", make_sessions(db_url))
    old, recent, busy = (make_series(ct_template, 2) for _ in range(3))
    for ds in old + recent + busy:
        put(store, ds)
    store.close()  # received; what follows needs only its database and folder
    long_ago = utcnow() - timedelta(days=40)
    with store.sessions.begin() as s:
        s.execute(update(Series).values(state="done"))
        s.execute(update(Series).where(Series.series_instance_uid.in_(
            [old[0].SeriesInstanceUID, busy[0].SeriesInstanceUID])).values(
            last_received_at=long_ago))
        s.execute(update(Series).where(Series.series_instance_uid == busy[0].SeriesInstanceUID)
                  .values(state="processing"))
    assert retention(store.sessions, store.root, 0) == 0  # 0 keeps everything
    assert retention(store.sessions, store.root, 30) == 2
    assert not (store.root / old[0].StudyInstanceUID / old[0].SeriesInstanceUID).exists()
    assert (store.root / busy[0].StudyInstanceUID / busy[0].SeriesInstanceUID).is_dir()
    with store.sessions() as s:
        assert s.scalar(select(func.count(Instance.id))) == 4
        row = s.scalar(select(Series).where(
            Series.series_instance_uid == old[0].SeriesInstanceUID))
        assert row.instance_count == 0 and "deleted after 30 days" in row.reason
