"""Priors from PACS when things go wrong: the PACS is down, holds nothing of the patient, or
cannot send the prior. Each is recorded (``prior_retrievals``) and the follow-up is analysed
without a comparison, never stuck; a retrieved prior is waited for, but not for ever.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, update

from dicomnode.assemble.series import sweep
from dicomnode.config import AssemblySettings, EligibilitySettings, load_settings
from dicomnode.db.models import Job, PriorRetrieval, Series, utcnow
from dicomnode.db.retrievals import job_retrievals, record_operations
from dicomnode.db.session import make_sessions
from dicomnode.domain import PacsOperation, SeriesRef
from dicomnode.jobs.queue import claim_next
from dicomnode.lab.orthanc import Orthanc
from dicomnode.lab.synth import make_study
from dicomnode.lab.synth.study import StudyTruth
from dicomnode.pacs_priors import pacs_prior_wait
from dicomnode.pipeline import Context, make_context, process_series
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.storage import results_dir
from tests.conftest import free_port
from tests.followup_cases import followup_pair
from tests.unit.receive.test_instance_store import put

needs_orthanc = pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent")


def _node(tmp_path: Path, query_pacs: str, *, wait_max_s: float = 600.0
          ) -> tuple[InstanceStore, Context]:
    root = tmp_path / "storage"
    store = InstanceStore(root, make_sessions(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\npath = "{root}"\n[segmentation]\nbackend = "threshold"\n'
                      '[prediction]\nenabled = false\n[delivery]\ntimeout_s = 5\n'
                      f'[followup]\nquery_pacs = "{query_pacs}"\nquery_wait_max_s = {wait_max_s}\n')
    return store, make_context(load_settings(config))


def _receive(store: InstanceStore, *studies: StudyTruth) -> None:
    for truth in studies:
        for path in sorted(truth.dicom_dir.glob("*.dcm")):
            put(store, pydicom.dcmread(path))
    sweep(store.sessions, AssemblySettings(settle_s=0), EligibilitySettings(),
          now=utcnow() + timedelta(seconds=1))


def _claim(store: InstanceStore) -> SeriesRef:
    ref = claim_next(store.sessions, store.root, "w1")
    assert ref is not None
    return ref


def _steps(store: InstanceStore, ref: SeriesRef) -> list[tuple[str, str]]:
    return [(r["operation"], r["outcome"]) for r in job_retrievals(store.sessions, ref.job_id)]


def test_pacs_down_is_recorded_and_the_series_analysed_without_comparison(tmp_path: Path) -> None:
    scan = make_study(tmp_path / "scan", seed=51, hemorrhage_ml=15.0, matrix=64)
    pacs = f"ORTHANC@127.0.0.1:{free_port()}"  # nothing listens there
    store, ctx = _node(tmp_path, pacs)
    try:
        _receive(store, scan)
        ref = _claim(store)
        record = process_series(ref, ctx, store.sessions)
        assert record["status"] == "done" and record["comparison"] is None
        rows = job_retrievals(store.sessions, ref.job_id)
        assert [(r["operation"], r["outcome"], r["peer"]) for r in rows] == [
            ("find_studies", "failed", pacs)]
        assert "not established" in rows[0]["detail"]
        stored = json.loads((results_dir(store.root, ref.series_instance_uid, ref.version)
                             / "result.json").read_text())
        assert [(q["operation"], q["outcome"]) for q in stored["prior_search"]] == [
            ("find_studies", "failed")]  # why there is no comparison, in the result itself
        # Asked once per job: a second look neither waits nor asks again.
        assert pacs_prior_wait(ref, ctx.settings, store.sessions) == []
        assert len(job_retrievals(store.sessions, ref.job_id)) == 1
    finally:
        store.sessions.kw["bind"].dispose()


@needs_orthanc
def test_nothing_found_and_a_failed_move_never_block_the_followup(tmp_path: Path) -> None:
    base, follow = followup_pair(tmp_path / "a", seed=52, baseline_ml=15.0, growth_ml=5.0,
                                 matrix=64)
    other = make_study(tmp_path / "b", seed=53, hemorrhage_ml=10.0, matrix=64)
    # Orthanc knows the node at a port where nothing listens: its C-MOVE sub-operations fail.
    node = {"dicomnode": ("DICOMNODE", "127.0.0.1", free_port())}
    with Orthanc(tmp_path / "orthanc", modalities=node) as orthanc:
        orthanc.upload(sorted(base.dicom_dir.glob("*.dcm")))
        store, ctx = _node(tmp_path, orthanc.peer)
        try:
            _receive(store, follow, other)
            records = {}
            for _ in range(2):
                ref = _claim(store)
                records[ref.series_instance_uid] = (ref, process_series(ref, ctx, store.sessions))
            ref, record = records[follow.series_instance_uid]
            assert record["status"] == "done" and record["comparison"] is None
            assert _steps(store, ref) == [("find_studies", "found"), ("find_series", "found"),
                                          ("move", "failed")]
            move = job_retrievals(store.sessions, ref.job_id)[-1]
            assert move["series_instance_uid"] == base.series_instance_uid
            assert move["completed"] == 0 and move["detail"].startswith("status 0x")
            ref, record = records[other.series_instance_uid]
            assert record["status"] == "done" and record["comparison"] is None
            assert _steps(store, ref) == [("find_studies", "none")]
            assert [q["outcome"] for q in record["prior_search"]] == ["none"]
            assert job_retrievals(store.sessions, ref.job_id)[0]["matches"] == 0
        finally:
            store.sessions.kw["bind"].dispose()


def test_a_retrieved_prior_is_waited_for_until_analysed_or_too_late(tmp_path: Path) -> None:
    scan = make_study(tmp_path / "scan", seed=54, hemorrhage_ml=10.0, matrix=64)
    prior = make_study(tmp_path / "prior", seed=55, hemorrhage_ml=10.0, matrix=64)
    pacs = f"ORTHANC@127.0.0.1:{free_port()}"
    store, ctx = _node(tmp_path, pacs, wait_max_s=60.0)
    try:
        _receive(store, scan)
        ref = _claim(store)
        now = utcnow()
        record_operations(store.sessions, ref.job_id, [PacsOperation(
            "move", pacs, "retrieved", now, now, matches=32,
            study_instance_uid=prior.study_instance_uid,
            series_instance_uid=prior.series_instance_uid, completed=32)])
        wait = [prior.series_instance_uid]
        assert pacs_prior_wait(ref, ctx.settings, store.sessions) == wait  # not arrived yet
        _receive(store, prior)  # arrived and queued
        assert pacs_prior_wait(ref, ctx.settings, store.sessions) == wait
        with store.sessions.begin() as s:  # fetched 61 s ago: too late, go on without it
            s.execute(update(PriorRetrieval).values(finished_at=now - timedelta(seconds=61)))
        assert pacs_prior_wait(ref, ctx.settings, store.sessions) == []
        with store.sessions.begin() as s:
            s.execute(update(PriorRetrieval).values(finished_at=now))
        # The fetched series is analysed without asking the PACS for a prior of its own ...
        prior_ref = _claim(store)
        assert prior_ref.series_instance_uid == prior.series_instance_uid
        assert process_series(prior_ref, ctx, store.sessions)["status"] == "done"
        assert job_retrievals(store.sessions, prior_ref.job_id) == []
        # ... and once it is, the follow-up waits no more.
        assert pacs_prior_wait(ref, ctx.settings, store.sessions) == []
    finally:
        store.sessions.kw["bind"].dispose()


@needs_orthanc
def test_a_prior_the_node_holds_but_could_not_analyse_is_not_fetched_again(tmp_path: Path) -> None:
    base, follow = followup_pair(tmp_path / "a", seed=56, baseline_ml=12.0, growth_ml=4.0,
                                 matrix=64)
    node = {"dicomnode": ("DICOMNODE", "127.0.0.1", free_port())}  # Orthanc answers known AEs
    with Orthanc(tmp_path / "orthanc", modalities=node) as orthanc:
        orthanc.upload(sorted(base.dicom_dir.glob("*.dcm")))
        store, ctx = _node(tmp_path, orthanc.peer)
        try:
            _receive(store, base, follow)
            with store.sessions.begin() as s:  # the node's own analysis of the baseline failed
                s.execute(update(Job).where(Job.series_id == select(Series.id).where(
                    Series.series_instance_uid == base.series_instance_uid).scalar_subquery())
                    .values(state="failed", error="VolumeError: test"))
            ref = _claim(store)
            assert ref.series_instance_uid == follow.series_instance_uid
            record = process_series(ref, ctx, store.sessions)
            assert record["status"] == "done" and record["comparison"] is None
            rows = job_retrievals(store.sessions, ref.job_id)
            assert [(r["operation"], r["outcome"]) for r in rows] == [
                ("find_studies", "found"), ("find_series", "none")]
            assert rows[1]["detail"] == f"{base.series_instance_uid}: the node holds it already"
        finally:
            store.sessions.kw["bind"].dispose()
