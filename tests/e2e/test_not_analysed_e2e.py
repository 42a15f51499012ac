"""QA end to end with real parts: DCMTK storescu -> ``dicomnode serve`` (+ worker) -> Orthanc.

Two series of one study are sent: one with bone and air zeroed by pre-processing (QA ``fail``)
and one with a metal clip (QA ``warn``). The refused series must end ``not_analysed`` with a
``QA: ...`` reason in ``dicomnode status`` (JSON and table), and only its "not analysed" key
image and TID 1500 SR may reach Orthanc: no SEG, no number, no risk. The warned series is
delivered with the warning in its SR. Every delivered object is read back from Orthanc's REST API
and passes dciodvfy.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicomnode.lab.orthanc import Orthanc
from dicomnode.lab.synth import make_study
from tests import qa_cases
from tests.conftest import free_port, requires
from tests.dciodvfy import dciodvfy
from tests.e2e.serve_orthanc import node_config, storescu, wait_for
from tests.reliability.harness import EMPTY_CONFIG, ServeProcess, status_json

pytestmark = [pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent"),
              pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK absent")]
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
FINAL = ("done", "not_analysed", "failed", "rejected")


def _series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
               .SeriesInstanceUID)


def _all_delivered(storage: Path, expected: int) -> list[dict] | None:
    rows = status_json(storage)
    if len(rows) < expected or any(r["state"] not in FINAL for r in rows):
        return None
    if any(r["state"] == "failed" for r in rows):
        raise AssertionError(f"a job failed: {[r['reason'] for r in rows]}")
    if all(r["delivery"] and not r["delivery"]["pending"] for r in rows):
        return rows
    return None


def _source_series(ds: pydicom.Dataset, instance_series: dict[str, str]) -> str:
    """The source series a delivered object was made from (its references)."""
    if ds.SOPClassUID == SR_CLASS:
        return str(ds.CurrentRequestedProcedureEvidenceSequence[0]
                   .ReferencedSeriesSequence[0].SeriesInstanceUID)
    if ds.SOPClassUID == SEG_CLASS:
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return instance_series[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]


def _items(items) -> list[pydicom.Dataset]:  # type: ignore[no-untyped-def]
    out = []
    for item in items or []:
        out.append(item)
        out.extend(_items(item.get("ContentSequence")))
    return out


def _dciodvfy_errors(data: bytes, path: Path) -> list[str]:
    path.write_bytes(data)
    return dciodvfy(path)[0]


@requires("dciodvfy")
def test_not_analysed_and_warned_series_reach_orthanc(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", seed=730011, hemorrhage_ml=20.0, matrix=64,
                       thickness_mm=5.0)
    zeroed = qa_cases.zeroed(study.dicom_dir, tmp_path / "zeroed")
    metal = qa_cases.metal(study.dicom_dir, tmp_path / "metal")
    zeroed_uid, metal_uid = _series_uid(zeroed), _series_uid(metal)
    instance_series = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): uid
                       for uid, folder in ((zeroed_uid, zeroed), (metal_uid, metal))
                       for p in folder.glob("*.dcm")}
    storage = tmp_path / "storage"
    with Orthanc(tmp_path / "orthanc") as pacs:
        config = node_config(tmp_path, pacs, predict=False)
        node = ServeProcess(storage, free_port(), settle_s=1.0, config=config)
        try:
            storescu(zeroed, node.port)
            storescu(metal, node.port)
            try:
                rows = wait_for(lambda: _all_delivered(storage, 2), timeout_s=240,
                                what="both series delivered")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {status_json(storage)}\n"
                                     f"{node.log.read_text()[-3000:]}") from None
            table = subprocess.run(
                [sys.executable, "-m", "dicomnode.cli", "status", "--config", str(EMPTY_CONFIG),
                 "--storage", str(storage)], capture_output=True, text=True, timeout=60,
                env={**os.environ, "COLUMNS": "400"})
        finally:
            node.stop()
        delivered = [pacs.file(i) for i in pacs.get("/instances")]
    by_uid = {r["series_instance_uid"]: r for r in rows}
    refused, warned = by_uid[zeroed_uid], by_uid[metal_uid]
    assert refused["state"] == "not_analysed" and refused["reason"].startswith("QA: HU calibration")
    assert refused["delivery"]["failed"] == 0 and refused["delivery"]["sent"] == 2
    assert warned["state"] == "done" and warned["delivery"]["failed"] == 0
    assert "not_analysed" in table.stdout and "QA: HU calibration" in table.stdout, table.stdout

    by_series: dict[str, dict[str, list[pydicom.Dataset]]] = {}
    for n, data in enumerate(delivered):
        ds = pydicom.dcmread(io.BytesIO(data))
        errors = _dciodvfy_errors(data, tmp_path / f"delivered-{n}.dcm")
        assert errors == [], f"{ds.SOPClassUID} {ds.get('SeriesDescription')}: {errors}"
        assert ds.StudyInstanceUID == study.study_instance_uid
        source = _source_series(ds, instance_series)
        by_series.setdefault(source, {}).setdefault(str(ds.SOPClassUID), []).append(ds)

    # Refused: one key image and one TID 1500 SR saying why; no SEG, no number, no risk.
    assert set(by_series[zeroed_uid]) == {SC_CLASS, SR_CLASS}
    (image,), (sr,) = by_series[zeroed_uid][SC_CLASS], by_series[zeroed_uid][SR_CLASS]
    assert "NOT ANALYSED" in image.ImageComments and "NOT ANALYSED" in image.SeriesDescription
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = _items(sr.ContentSequence)
    assert not [i for i in items if i.ValueType == "NUM"]
    texts = [str(i.TextValue) for i in items if i.ValueType == "TEXT"]
    assert f"not analysed: {refused['reason'][len('QA: '):]}" in texts

    # Warned: SEG, SR and overlays delivered, the warning in the SR.
    assert {SEG_CLASS, SR_CLASS, SC_CLASS} <= set(by_series[metal_uid])
    (warned_sr,) = by_series[metal_uid][SR_CLASS]
    warned_texts = [str(i.TextValue) for i in _items(warned_sr.ContentSequence)
                    if i.ValueType == "TEXT"]
    assert any(t.startswith("QA WARNING: metal") for t in warned_texts), warned_texts
    assert any(i.ValueType == "NUM" for i in _items(warned_sr.ContentSequence))
