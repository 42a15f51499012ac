"""QA through ``dicomnode run``: refused series end as not_analysed with a "not analysed" key image
and SR (dciodvfy-clean), warned series carry the warning, plain series pass; the second reader runs
with a stand-in backend (the unet as second reader of the threshold backend)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom

from dicomnode.lab.synth import make_study
from tests import qa_cases
from tests.conftest import requires


def _run(inputs: Path, out: Path, config: Path) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-m", "dicomnode.cli", "run", str(inputs), "--out", str(out),
                    "--config", str(config)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/result.json")}


@requires("dciodvfy")
def test_run_refuses_warns_and_passes(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    plain = make_study(inputs / "plain", seed=730001, hemorrhage_ml=20.0, matrix=64).dicom_dir
    qa_cases.zeroed(plain, inputs / "zeroed")
    qa_cases.child(plain, inputs / "child")
    qa_cases.metal(plain, inputs / "metal")
    config = tmp_path / "c.toml"
    config.write_text('[segmentation]\nbackend = "threshold"\n[prediction]\nenabled = false\n'
                      '[qa]\nsecond_reader = "unet"\nsecond_reader_on_cpu = true\n')
    records = _run(inputs, tmp_path / "out", config)
    by_desc = {}
    for uid, record in records.items():
        for folder in ("plain", "zeroed", "child", "metal"):
            first = next((inputs / folder).rglob("*.dcm"))
            if str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID) == uid:
                by_desc[folder] = (uid, record)
    uid, plain_rec = by_desc["plain"]
    assert plain_rec["status"] == "done" and plain_rec["qa"]["status"] == "pass"
    names = {c["name"] for c in plain_rec["qa"]["checks"]}
    assert {"air_hu", "skull", "brain_volume", "second_reader_ich"} <= names
    second = next(c for c in plain_rec["qa"]["checks"] if c["name"] == "second_reader_ich")
    assert second["value"] is not None and "unet" in second["message"].lower()
    for folder, check in (("zeroed", "HU calibration"), ("child", "age")):
        uid, rec = by_desc[folder]
        assert rec["status"] == "not_analysed" and rec["reason"].startswith(f"QA: {check}")
        assert rec["qa"]["status"] == "fail" and rec["ich_volume_ml"] == 0.0
        out = tmp_path / "out" / uid
        assert not (out / "seg.dcm").exists()
        image, sr = pydicom.dcmread(out / "not-analysed.dcm"), pydicom.dcmread(out / "sr.dcm")
        assert "NOT ANALYSED" in image.ImageComments and image.StudyInstanceUID == sr.StudyInstanceUID
        evaluations = sr.ContentSequence[-1]  # TID 1500 row 12, Qualitative Evaluations
        assert evaluations.ConceptNameCodeSequence[0].CodeValue == "C0034375"
        texts = [item.TextValue for item in evaluations.ContentSequence if "TextValue" in item]
        assert texts[0] == f"not analysed: {rec['reason'][4:]}"
        for path in (out / "not-analysed.dcm", out / "sr.dcm"):
            proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            assert not [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln]
    uid, metal = by_desc["metal"]
    assert metal["status"] == "done" and metal["qa"]["status"] == "warn"
    assert any(w.startswith("metal:") for w in metal["warnings"])
    sr = pydicom.dcmread(tmp_path / "out" / uid / "sr.dcm")
    assert any("QA WARNING: metal" in str(i.get("TextValue", "")) for i in sr.ContentSequence)
    overlay = pydicom.dcmread(sorted((tmp_path / "out" / uid / "overlay").glob("*.dcm"))[0])
    assert "QA WARNING: metal" in overlay.ImageComments


