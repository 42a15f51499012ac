"""End to end with real parts: DCMTK storescu -> dicomnode serve (+ worker) -> Orthanc.

The node runs the ``threshold`` backend here so the test needs no trained weights and stays
fast; the SEG's mask is checked against the phantom's truth. A second test keeps the PACS down
until results are ready, then brings it up: every result arrives exactly once. The first test
runs on SQLite (the default database) and the second on PostgreSQL: each whole run costs a
minute on this machine, and the same outage on SQLite is tests/reliability/test_outage.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomnode.lab.orthanc import Orthanc
from dicomnode.lab.synth import make_study
from tests.conftest import free_port
from tests.e2e.serve_orthanc import node_config, storescu, wait_for
from tests.reliability.harness import ServeProcess, status_json

pytestmark = [pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent"),
              pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK absent")]
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _delivered(storage: Path, config: Path) -> dict | None:
    rows = status_json(storage, config)
    if rows and rows[0]["state"] == "failed":
        raise AssertionError(f"job failed: {rows[0]['reason']}")
    if rows and rows[0]["state"] == "done" and rows[0]["delivery"] and \
            not rows[0]["delivery"]["pending"]:
        return rows[0]
    return None


def test_results_arrive_in_orthanc_with_references_and_a_correct_mask(tmp_path: Path) -> None:
    truth = make_study(tmp_path / "study", seed=11, hemorrhage_ml=25.0, site="lobar",
                       matrix=128, thickness_mm=5.0)
    with Orthanc(tmp_path / "orthanc") as pacs:
        config = node_config(tmp_path, pacs)
        node = ServeProcess(tmp_path / "storage", free_port(), settle_s=1.0, config=config)
        try:
            storescu(truth.dicom_dir, node.port)
            row = wait_for(lambda: _delivered(tmp_path / "storage", config), what="delivery")
        finally:
            node.stop()
        assert row["delivery"]["failed"] == 0
        by_class: dict[str, list[pydicom.Dataset]] = {}
        for inst in pacs.get("/instances"):
            ds = pydicom.dcmread(__import__("io").BytesIO(pacs.file(inst)))
            by_class.setdefault(str(ds.SOPClassUID), []).append(ds)
    seg, = by_class[SEG_CLASS]
    sr, = by_class[SR_CLASS]
    overlays = by_class[SC_CLASS]
    assert len(overlays) >= 2  # slices with blood + one summary
    for ds in (seg, sr, *overlays):
        assert ds.StudyInstanceUID == truth.study_instance_uid
    sources = {str(ds.SOPInstanceUID) for ds in
               (pydicom.dcmread(p, stop_before_pixels=True)
                for p in sorted(truth.dicom_dir.glob("*.dcm")))}
    refs = {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for f in seg.PerFrameFunctionalGroupsSequence}
    assert refs <= sources
    assert str(seg.SOPInstanceUID) in sr_referenced_uids(sr)
    # The SEG's ICH mask against the phantom's truth.
    import highdicom as hd

    seg_obj = hd.seg.Segmentation.from_dataset(seg)
    ich = next(s.SegmentNumber for s in seg.SegmentSequence if "ICH" in s.SegmentLabel)
    order = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
             for p in sorted(truth.dicom_dir.glob("*.dcm"))]
    mask = seg_obj.get_pixels_by_source_instance(order, segment_numbers=[ich],
                                                 combine_segments=True)
    truth_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(truth.label_path)))
    predicted, expected = mask > 0, truth_labels == 1
    dice = 2 * (predicted & expected).sum() / (predicted.sum() + expected.sum())
    assert dice >= 0.6, dice


def sr_referenced_uids(sr: pydicom.Dataset) -> set[str]:
    found: set[str] = set()

    def walk(items) -> None:  # type: ignore[no-untyped-def]
        for item in items or []:
            for ref in item.get("ReferencedSOPSequence", []):
                found.add(str(ref.ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence"))

    walk(sr.ContentSequence)
    return found


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_pacs_down_then_up_every_result_arrives_exactly_once(tmp_path: Path, db_url: str) -> None:
    truth = make_study(tmp_path / "study", seed=12, hemorrhage_ml=15.0, site="basal_ganglia",
                       matrix=64, thickness_mm=5.0)
    pacs = Orthanc(tmp_path / "orthanc")  # not started: the PACS is down
    config = node_config(tmp_path, pacs, db_url=db_url)
    node = ServeProcess(tmp_path / "storage", free_port(), settle_s=1.0, config=config)
    try:
        storescu(truth.dicom_dir, node.port)

        def retried() -> dict | None:
            rows = status_json(tmp_path / "storage", config)
            d = rows[0]["delivery"] if rows and rows[0]["state"] == "done" else None
            return rows[0] if d and d["pending"] else None

        row = wait_for(retried, what="results waiting for the PACS")
        pending = row["delivery"]["pending"]
        time.sleep(2)  # a few failed attempts with backoff
        with pacs:
            row = wait_for(lambda: _delivered(tmp_path / "storage", config),
                        what="delivery after outage")
            time.sleep(2)  # nothing more arrives later
            stored = [i["SOPInstanceUID"] for i in pacs.instances()]
    finally:
        node.stop()
    assert row["delivery"]["sent"] == pending and row["delivery"]["failed"] == 0
    assert len(stored) == len(set(stored)) == pending
    assert np.all([bool(u) for u in stored])
