"""The job queue with leases, on SQLite and on PostgreSQL: claim, renew, take over, finish."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select, update

from dicomnode.assemble.series import sweep
from dicomnode.config import AssemblySettings, EligibilitySettings
from dicomnode.db.models import Job, OutboxItem, Series, utcnow
from dicomnode.db.session import make_sessions
from dicomnode.errors import LeaseLost
from dicomnode.jobs.leases import LeaseKeeper, cluster_lock, release_own, renew
from dicomnode.jobs.queue import claim_next, finish, requeue, requeue_stale
from dicomnode.receive.instance_store import InstanceStore
from tests.ct_series import make_series
from tests.stores import open_store
from tests.unit.receive.test_instance_store import put


@pytest.fixture
def queued(tmp_path: Path, ct_template: Dataset, db_url: str) -> Iterator[InstanceStore]:
    """Two series received and completed: two queued jobs."""
    with open_store(tmp_path / "s", db_url) as store:
        for _ in range(2):
            for ds in make_series(ct_template, 10):
                put(store, ds)
        sweep(store.sessions, AssemblySettings(settle_s=0), EligibilitySettings(),
              now=utcnow() + timedelta(seconds=1))
        yield store


def expire(store: InstanceStore, job_id: int) -> None:
    with store.sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_claim_each_job_once_then_finish(queued: InstanceStore) -> None:
    store = queued
    a = claim_next(store.sessions, store.root, "w1")
    b = claim_next(store.sessions, store.root, "w2")
    assert a and b and a.job_id != b.job_id and a.lease_token != b.lease_token
    assert claim_next(store.sessions, store.root, "w3") is None
    assert len(a.instance_paths) == 10 and all(p.is_file() for p in a.instance_paths)
    finish(store.sessions, a.job_id, timings_s={"load": 0.1}, token=a.lease_token)
    finish(store.sessions, b.job_id, error="VolumeError: mixed geometry", token=b.lease_token)
    with store.sessions() as s:
        states = {j.id: (j.state, j.error) for j in s.scalars(select(Job))}
        assert states[a.job_id] == ("done", "")
        assert states[b.job_id] == ("failed", "VolumeError: mixed geometry")
        assert sorted(s.scalars(select(Series.state))) == ["done", "failed"]
    requeue(store.sessions, b.job_id)
    assert claim_next(store.sessions, store.root, "w1").job_id == b.job_id


def test_a_live_lease_is_never_taken_over(queued: InstanceStore) -> None:
    store = queued
    a = claim_next(store.sessions, store.root, "gpu-1", lease_s=60)
    b = claim_next(store.sessions, store.root, "gpu-2", lease_s=60)
    assert a and b
    assert requeue_stale(store.sessions) == 0  # a peer starting up leaves them alone
    assert claim_next(store.sessions, store.root, "gpu-3") is None


def test_an_expired_lease_is_taken_over_and_the_first_holder_cannot_finish(
        queued: InstanceStore) -> None:
    store = queued
    first = claim_next(store.sessions, store.root, "stalled")
    claim_next(store.sessions, store.root, "other")
    expire(store, first.job_id)
    second = claim_next(store.sessions, store.root, "rescuer")
    assert second.job_id == first.job_id and second.lease_token != first.lease_token
    with pytest.raises(LeaseLost):
        finish(store.sessions, first.job_id, timings_s={}, token=first.lease_token)
    assert renew(store.sessions, Job, first.lease_token, 60) == 0
    finish(store.sessions, second.job_id, timings_s={}, token=second.lease_token)
    with store.sessions() as s:
        job = s.get(Job, first.job_id)
        assert (job.state, job.worker, job.attempts) == ("done", "rescuer", 2)


def test_the_keeper_renews_and_notices_a_lost_lease(queued: InstanceStore) -> None:
    store = queued
    ref = claim_next(store.sessions, store.root, "w1", lease_s=1.0)
    with LeaseKeeper(store.sessions, Job, ref.lease_token, lease_s=1.0, renew_s=0.2) as keeper:
        threading.Event().wait(1.5)  # longer than the lease: renewals keep it ours
        assert claim_next(store.sessions, store.root, "w2", lease_s=1.0).job_id != ref.job_id
        assert not keeper.lost.is_set()
        with store.sessions.begin() as s:  # someone took it over
            s.execute(update(Job).where(Job.id == ref.job_id).values(lease_token="x" * 32))
        assert keeper.lost.wait(2)


def test_a_restarted_worker_releases_its_own_claims_only(queued: InstanceStore) -> None:
    store = queued
    mine = claim_next(store.sessions, store.root, "host:111")
    other = claim_next(store.sessions, store.root, "host:222")
    assert release_own(store.sessions, ("host:111",)) == (1, 0)
    assert claim_next(store.sessions, store.root, "host:333").job_id == mine.job_id
    with store.sessions() as s:
        assert s.get(Job, other.job_id).state == "processing"  # the live worker keeps its job


def test_expired_leases_are_requeued_at_start_up(queued: InstanceStore) -> None:
    store = queued
    ref = claim_next(store.sessions, store.root, "dead-worker")
    expire(store, ref.job_id)
    assert requeue_stale(store.sessions) == 1
    again = claim_next(store.sessions, store.root, "w2")
    assert again.job_id == ref.job_id
    with store.sessions() as s:
        assert s.get(Job, ref.job_id).attempts == 2


def test_concurrent_claims_never_share_a_job(queued: InstanceStore) -> None:
    store = queued
    got: list[int] = []
    errors: list[BaseException] = []

    def claim(name: str) -> None:
        try:
            ref = claim_next(store.sessions, store.root, name)
            if ref is not None:
                got.append(ref.job_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(got) == sorted(set(got)) and len(got) == 2


def test_a_cluster_lock_is_held_by_one_process_at_a_time(queued: InstanceStore) -> None:
    store = queued
    other = make_sessions(str(store.sessions.kw["bind"].url.render_as_string(hide_password=False)))
    with cluster_lock(store.sessions, "sweep") as first:
        assert first
        with cluster_lock(other, "sweep") as second:
            postgres = store.sessions.kw["bind"].dialect.name == "postgresql"
            assert second is (not postgres)  # SQLite: one host, no lock needed
    with cluster_lock(other, "sweep") as again:
        assert again


def test_outbox_items_are_claimed_by_one_sender(queued: InstanceStore) -> None:
    from dicomnode.send.outbox import claim_due

    store = queued
    ref = claim_next(store.sessions, store.root, "w1")
    with store.sessions.begin() as s:
        for n in range(3):
            s.add(OutboxItem(job_id=ref.job_id, kind="seg", destination="pacs", path="x.dcm",
                             sop_class_uid="1.2", sop_instance_uid=f"2.25.{n}"))
    token_a, items_a = claim_due(store.sessions, "node-a", 60)
    token_b, items_b = claim_due(store.sessions, "node-b", 60)
    assert len(items_a) == 3 and items_b == []
    assert release_own(store.sessions, (), senders=("node-a",)) == (0, 3)
    assert len(claim_due(store.sessions, "node-b", 60)[1]) == 3


def test_not_analysed_is_a_state_of_its_own(queued: InstanceStore) -> None:
    store = queued
    ref = claim_next(store.sessions, store.root, "w1")
    assert ref is not None
    finish(store.sessions, ref.job_id, not_analysed="QA: skull: 0% bone", outputs={"items": []},
           token=ref.lease_token)
    with store.sessions() as s:
        job = s.get(Job, ref.job_id)
        assert job is not None and (job.state, job.error) == ("not_analysed", "QA: skull: 0% bone")
        series = {r.state: r.reason for r in s.scalars(select(Series))}
        assert series["not_analysed"] == "QA: skull: 0% bone"
