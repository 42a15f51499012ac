"""Follow-ups in ``serve``: the worker compares a follow-up with its prior analysed by the node
(stored results and the database), defers one whose prior is still queued, and the outbox
delivers the follow-up's SR and comparison key image to Orthanc."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import update

from dicomnode.assemble.series import sweep
from dicomnode.config import AssemblySettings, EligibilitySettings, load_settings
from dicomnode.db.models import Job, utcnow
from dicomnode.db.session import make_sessions
from dicomnode.jobs.queue import claim_next
from dicomnode.lab.orthanc import Orthanc
from dicomnode.lab.synth.study import StudyTruth
from dicomnode.pipeline import make_context, process_series
from dicomnode.receive.instance_store import InstanceStore
from dicomnode.send.outbox import deliver_due
from dicomnode.storage import results_dir
from tests.followup_cases import followup_pair
from tests.unit.receive.test_instance_store import put


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc not installed")
def test_worker_defers_then_compares_followup(tmp_path: Path, db_url: str) -> None:
    """On SQLite and on PostgreSQL (``db_url``): the prior is found by a database query."""
    base, follow = followup_pair(tmp_path / "synth", seed=31, baseline_ml=25.0, growth_ml=16.0)
    root = tmp_path / "storage"
    store = InstanceStore(root, make_sessions(db_url))
    try:
        _defer_then_compare(tmp_path, root, store, base, follow)
    finally:
        store.close()


def _defer_then_compare(tmp_path: Path, root: Path, store: InstanceStore, base: StudyTruth,
                        follow: StudyTruth) -> None:
    for truth in (follow, base):  # the follow-up arrives first: its job is claimed first
        for path in sorted(truth.dicom_dir.glob("*.dcm")):
            put(store, pydicom.dcmread(path))
    store.close()  # received; what follows needs only its database and folder
    sweep(store.sessions, AssemblySettings(settle_s=0), EligibilitySettings(),
          now=utcnow() + timedelta(seconds=1))
    config = tmp_path / "c.toml"
    pacs = Orthanc(tmp_path / "orthanc")
    config.write_text(f'[storage]\npath = "{root}"\n[segmentation]\nbackend = "threshold"\n'
                      '[prediction]\nenabled = false\n[[destinations]]\nname = "pacs"\n'
                      f'ae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n'
                      'outputs = ["sr", "overlay"]\n')
    settings = load_settings(config)
    ctx = make_context(settings)

    first = claim_next(store.sessions, root, "w1")
    assert first is not None and first.series_instance_uid == follow.series_instance_uid
    record = process_series(first, ctx, store.sessions)
    assert record["status"] == "deferred" and base.series_instance_uid in record["reason"]
    prior = claim_next(store.sessions, root, "w1")  # the deferred job is not claimable yet
    assert prior is not None and prior.series_instance_uid == base.series_instance_uid
    assert claim_next(store.sessions, root, "w1") is None
    assert process_series(prior, ctx, store.sessions)["status"] == "done"

    with store.sessions.begin() as s:  # wait_s has passed
        s.execute(update(Job).where(Job.id == first.job_id)
                  .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    again = claim_next(store.sessions, root, "w1")
    assert again is not None and again.job_id == first.job_id
    record = process_series(again, ctx, store.sessions)
    assert record["status"] == "done"
    stored = json.loads((results_dir(root, follow.series_instance_uid, 1) / "result.json")
                        .read_text())
    c = stored["comparison"]
    assert c["prior_series_instance_uid"] == base.series_instance_uid and c["interval_h"] == 24.0
    truth = follow.ich_volume_ml - base.ich_volume_ml
    assert abs(c["ich_change_ml"] - truth) <= max(1.5, 0.1 * follow.ich_volume_ml)
    assert c["expansion"] is True and c["registration"]["trusted"] is True
    out = results_dir(root, follow.series_instance_uid, 1)
    key = pydicom.dcmread(out / "comparison.dcm", stop_before_pixels=True)
    sr = pydicom.dcmread(out / "sr.dcm")
    assert key.StudyInstanceUID == follow.study_instance_uid and key.Modality == "OT"
    with pacs:
        deliver_due(store.sessions, settings)
        stored = {i["SOPInstanceUID"]: i for i in pacs.instances()}
    assert {key.SOPInstanceUID, sr.SOPInstanceUID} <= set(stored)
    assert stored[key.SOPInstanceUID]["SeriesInstanceUID"] == key.SeriesInstanceUID
    store.sessions.kw["bind"].dispose()
