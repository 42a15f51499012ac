"""Job queue: claim once, finish, failures recorded, stale jobs re-queued."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomnode.assemble.series import sweep
from dicomnode.config import AssemblySettings, EligibilitySettings
from dicomnode.db.models import Job, Series, utcnow
from dicomnode.db.session import make_sessions
from dicomnode.jobs.queue import claim_next, finish, requeue, requeue_stale
from dicomnode.receive.instance_store import InstanceStore
from tests.ct_series import make_series
from tests.unit.receive.test_instance_store import put


def _queued(tmp_path: Path, ct_template: Dataset, n_series: int = 2) -> InstanceStore:
    store = InstanceStore(tmp_path / "s", make_sessions(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    for _ in range(n_series):
        for ds in make_series(ct_template, 10):
            put(store, ds)
    sweep(store.sessions, AssemblySettings(settle_s=0), EligibilitySettings(),
          now=utcnow() + timedelta(seconds=1))
    return store


def test_claim_each_job_once_then_finish(tmp_path: Path, ct_template: Dataset) -> None:
    store = _queued(tmp_path, ct_template)
    a = claim_next(store.sessions, store.root, "w1")
    b = claim_next(store.sessions, store.root, "w2")
    assert a and b and a.job_id != b.job_id
    assert claim_next(store.sessions, store.root, "w3") is None
    assert len(a.instance_paths) == 10 and all(p.is_file() for p in a.instance_paths)
    finish(store.sessions, a.job_id, timings_s={"load": 0.1})
    finish(store.sessions, b.job_id, error="VolumeError: mixed geometry")
    with store.sessions() as s:
        states = {j.id: (j.state, j.error) for j in s.scalars(select(Job))}
        assert states[a.job_id] == ("done", "")
        assert states[b.job_id] == ("failed", "VolumeError: mixed geometry")
        assert sorted(s.scalars(select(Series.state))) == ["done", "failed"]
    requeue(store.sessions, b.job_id)
    assert claim_next(store.sessions, store.root, "w1").job_id == b.job_id


def test_stale_processing_jobs_are_requeued(tmp_path: Path, ct_template: Dataset) -> None:
    store = _queued(tmp_path, ct_template, 1)
    ref = claim_next(store.sessions, store.root, "dead-worker")
    assert requeue_stale(store.sessions) == 1
    again = claim_next(store.sessions, store.root, "w2")
    assert again.job_id == ref.job_id
    with store.sessions() as s:
        assert s.get(Job, ref.job_id).attempts == 2


def test_a_dead_workers_jobs_go_back_to_the_queue(tmp_path: Path, ct_template: Dataset) -> None:
    from dicomnode.jobs.queue import requeue_worker

    store = _queued(tmp_path, ct_template, 2)
    mine = claim_next(store.sessions, store.root, "host:111")
    other = claim_next(store.sessions, store.root, "host:222")
    assert requeue_worker(store.sessions, "host:111") == 1
    assert claim_next(store.sessions, store.root, "host:333").job_id == mine.job_id
    with store.sessions() as s:
        assert s.get(Job, other.job_id).state == "processing"  # the live worker keeps its job


def test_not_analysed_is_a_state_of_its_own(tmp_path: Path, ct_template: Dataset) -> None:
    store = _queued(tmp_path, ct_template, 1)
    ref = claim_next(store.sessions, store.root, "w1")
    assert ref is not None
    finish(store.sessions, ref.job_id, not_analysed="QA: skull: 0% bone", outputs={"items": []})
    with store.sessions() as s:
        job = s.get(Job, ref.job_id)
        assert job is not None and (job.state, job.error) == ("not_analysed", "QA: skull: 0% bone")
        assert list(s.scalars(select(Series.state))) == ["not_analysed"]
        assert list(s.scalars(select(Series.reason))) == ["QA: skull: 0% bone"]
