"""Priors from PACS, end to end: Orthanc holds the baseline, ``dicomnode serve`` receives only
the follow-up (DCMTK storescu), fetches the baseline from Orthanc (C-FIND, C-MOVE to its own AE
title), analyses it, then compares the follow-up with it.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pydicom
import pytest

from dicomnode.lab.orthanc import Orthanc
from dicomnode.storage import results_dir
from tests.conftest import free_port
from tests.e2e.serve_orthanc import node_config, storescu, wait_for
from tests.e2e.test_orthanc_e2e import SEG_CLASS
from tests.followup_cases import followup_pair
from tests.reliability.harness import ServeProcess, status_json

pytestmark = [pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent"),
              pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK absent")]
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
FOLLOWUP = "[followup]\nwait_s = 1.0\nquery_pacs = \"orthanc\"\n"


def _both_delivered(storage: Path) -> list[dict] | None:
    rows = status_json(storage)
    for row in rows:
        if row["state"] in ("failed", "not_analysed", "rejected"):
            raise AssertionError(f"series {row['state']}: {row.get('reason')}")
    done = [r for r in rows if r["state"] == "done" and r["delivery"]
            and not r["delivery"]["pending"]]
    return rows if len(rows) == 2 and len(done) == 2 else None


def _uids(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.glob("*.dcm")}


def test_followup_fetches_its_prior_from_orthanc_and_is_compared(tmp_path: Path) -> None:
    base, follow = followup_pair(tmp_path / "synth", seed=41, baseline_ml=20.0, growth_ml=14.0)
    port = free_port()
    storage = tmp_path / "storage"
    node_modality = {"dicomnode": ("DICOMNODE", "127.0.0.1", port)}
    with Orthanc(tmp_path / "orthanc", modalities=node_modality) as pacs:
        pacs.upload(sorted(base.dicom_dir.glob("*.dcm")))
        config = node_config(tmp_path, pacs, predict=False, extra=FOLLOWUP)
        node = ServeProcess(storage, port, settle_s=1.0, config=config)
        try:
            storescu(follow.dicom_dir, port)  # only the follow-up reaches the node
            wait_for(lambda: _both_delivered(storage), timeout_s=300, what="both series delivered")
        finally:
            node.stop()
        in_pacs: dict[str, set[str]] = {}
        for iid in pacs.get("/instances"):
            tags = pacs.get(f"/instances/{iid}/tags?simplify")
            in_pacs.setdefault(tags["SOPClassUID"], set()).add(tags["SOPInstanceUID"])

    record = json.loads((results_dir(storage, follow.series_instance_uid, 1) / "result.json")
                        .read_text())
    c = record["comparison"]
    assert c is not None and c["prior_series_instance_uid"] == base.series_instance_uid
    assert c["interval_h"] == 24.0 and c["expansion"] is True
    assert abs(c["ich_change_ml"] - (follow.ich_volume_ml - base.ich_volume_ml)) <= \
        max(1.5, 0.1 * follow.ich_volume_ml)
    prior = json.loads((results_dir(storage, base.series_instance_uid, 1) / "result.json")
                       .read_text())
    assert prior["status"] == "done" and prior["comparison"] is None

    # The PACS holds the baseline's images as uploaded, never a copy from the node, nor the
    # follow-up's images; both series' results (one SEG each) were delivered.
    base_uids = _uids(base.dicom_dir)
    assert in_pacs[CT_CLASS] == base_uids
    assert len(in_pacs[SEG_CLASS]) == 2
    with sqlite3.connect(storage / "dicomnode.db") as db:
        sent = {r[0] for r in db.execute("SELECT sop_instance_uid FROM outbox")}
        kinds = {r[0] for r in db.execute("SELECT kind FROM outbox")}
        rows = db.execute("SELECT operation, outcome, matches, study_instance_uid, "
                          "series_instance_uid, completed, failed FROM prior_retrievals "
                          "ORDER BY id").fetchall()
    assert not sent & base_uids and kinds <= {"seg", "sr", "overlay"}
    assert rows == [
        ("find_studies", "found", 1, base.study_instance_uid, "", 0, 0),
        ("find_series", "found", 1, base.study_instance_uid, base.series_instance_uid, 0, 0),
        ("move", "retrieved", base.n_slices, base.study_instance_uid, base.series_instance_uid,
         base.n_slices, 0),
    ]
