"""Follow-ups through ``dicomnode run``: one patient's studies in acquisition order, each later
one compared with the baseline (threshold backend, 128 matrix, 5 mm; one case at 1 mm)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import load_settings
from dicomnode.pipeline import process_folder
from tests.dciodvfy import dciodvfy
from tests.followup_cases import followup_findings, followup_pair, later_scan


def _settings(tmp_path: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    config = tmp_path / "c.toml"
    config.write_text('[segmentation]\nbackend = "threshold"\n[prediction]\nenabled = false\n'
                      + extra)
    return load_settings(config)


def test_run_compares_followup_with_baseline(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    base, follow = followup_pair(inputs / "p1", seed=31, baseline_ml=25.0, growth_ml=16.0)
    other_base, other_follow = followup_pair(inputs / "p2", seed=41, baseline_ml=25.0,
                                             growth_ml=2.0)
    records = process_folder(inputs, out, _settings(tmp_path))
    by_uid = {r["series_instance_uid"]: r for r in records}
    assert all(r["status"] == "done" for r in records)
    assert by_uid[base.series_instance_uid]["comparison"] is None
    assert by_uid[base.series_instance_uid]["comparisons"] == []
    for b, f, expanded in ((base, follow, True), (other_base, other_follow, False)):
        stored = json.loads((out / f.series_instance_uid / "result.json").read_text())
        c = stored["comparison"]
        assert c["prior_series_instance_uid"] == b.series_instance_uid
        assert c["interval_h"] == 24.0 and c["prior_study_datetime"].startswith("20")
        truth = f.ich_volume_ml - b.ich_volume_ml
        assert abs(c["ich_change_ml"] - truth) <= max(1.5, 0.1 * f.ich_volume_ml), (c, truth)
        assert c["expansion"] is expanded and (truth > 6.0) is expanded
        assert c["registration"]["trusted"] is True
        assert abs(c["ich_volume_ml"] - stored["ich_volume_ml"]) < 0.5
        assert c["prior_he_probability"] is None and stored["comparisons"] == [c]
        assert "compare" in stored["timings_s"]
        sr = pydicom.dcmread(out / f.series_instance_uid / "sr.dcm")
        findings = followup_findings(sr)
        assert findings["HE_OBSERVED"] == ("Yes" if expanded else "No")
        assert findings["PRIOR_SERIES"] == b.series_instance_uid
        assert findings["ICH_CHANGE"] == pytest.approx(c["ich_change_ml"], abs=0.01)
        assert findings["baseline_seg"] == pydicom.dcmread(
            out / b.series_instance_uid / "seg.dcm").SOPInstanceUID
        key = pydicom.dcmread(out / f.series_instance_uid / "comparison.dcm")
        assert key.Modality == "OT" and key.SeriesInstanceUID != sr.SeriesInstanceUID
        assert (out / f.series_instance_uid / "previews" / "comparison.png").is_file()
    base_sr = pydicom.dcmread(out / base.series_instance_uid / "sr.dcm")
    names: set[str] = set()
    items = list(base_sr.ContentSequence)
    while items:
        item = items.pop()
        names.add(item.ConceptNameCodeSequence[0].CodeValue)
        items.extend(item.get("ContentSequence", []))
    assert "HE_OBSERVED" not in names and "PRIOR_SERIES" not in names  # the baseline compares nothing
    assert not (out / base.series_instance_uid / "comparison.dcm").exists()
    # The threshold backend labels no IVH: new IVH is tested on truth labels (tests/unit/compare).
    assert by_uid[follow.series_instance_uid]["comparison"]["new_ivh"] is False


@pytest.mark.parametrize(("growth_ml", "expanded"), [(16.0, True), (2.0, False)])
def test_run_1mm_followup(tmp_path: Path, growth_ml: float, expanded: bool) -> None:
    """1 mm slices (128 matrix, 160 slices): growth either side of 6 mL, the SR and the key
    image valid (dciodvfy)."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    base, follow = followup_pair(inputs, seed=31, baseline_ml=25.0, growth_ml=growth_ml,
                                 thickness_mm=1.0)
    records = {r["series_instance_uid"]: r for r in process_folder(inputs, out, _settings(tmp_path))}
    c = records[follow.series_instance_uid]["comparison"]
    truth = follow.ich_volume_ml - base.ich_volume_ml
    assert (truth > 6.0) is expanded and abs(truth - 6.0) > 1.5  # clearly on one side
    assert abs(c["ich_change_ml"] - truth) <= max(1.5, 0.1 * follow.ich_volume_ml), (c, truth)
    assert c["expansion"] is expanded and c["registration"]["trusted"] is True
    assert c["interval_h"] == 24.0
    for name in ("sr.dcm", "comparison.dcm"):
        errors, warnings = dciodvfy(out / follow.series_instance_uid / name)
        assert errors == [], "\n".join(errors)
        assert all("99DCMNODE" in w for w in warnings), "\n".join(warnings)
    assert followup_findings(pydicom.dcmread(out / follow.series_instance_uid / "sr.dcm"))[
        "HE_OBSERVED"] == ("Yes" if expanded else "No")


def _same_identity(src: Path, dst: Path, hours_later: float) -> None:
    """Give the series in ``dst`` the identity of ``src`` and a time ``hours_later``."""
    ref = pydicom.dcmread(next(src.glob("*.dcm")), stop_before_pixels=True)
    when = datetime.strptime(ref.StudyDate + ref.StudyTime[:6], "%Y%m%d%H%M%S") + timedelta(
        hours=hours_later)
    for path in dst.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (ref.PatientID, ref.PatientBirthDate,
                                                            ref.PatientSex)
        for kind in ("Study", "Series", "Acquisition", "Content"):
            if f"{kind}Date" in ds:
                setattr(ds, f"{kind}Date", when.strftime("%Y%m%d"))
                setattr(ds, f"{kind}Time", when.strftime("%H%M%S"))
        if "AcquisitionDateTime" in ds:
            ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
        ds.save_as(path)


def test_run_reports_unrelated_scans_of_one_patient_id(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    base, _ = followup_pair(tmp_path / "a", seed=11, baseline_ml=20.0, growth_ml=1.0)
    other, _ = followup_pair(tmp_path / "b", seed=12, baseline_ml=20.0, growth_ml=1.0)
    shutil.copytree(base.dicom_dir, inputs / "a")
    shutil.copytree(other.dicom_dir, inputs / "b")
    _same_identity(inputs / "a", inputs / "b", 30.0)  # another head under the same patient
    records = {r["series_instance_uid"]: r for r in process_folder(inputs, out, _settings(tmp_path))}
    c = records[other.series_instance_uid]["comparison"]
    assert c["prior_series_instance_uid"] == base.series_instance_uid and c["interval_h"] == 30.0
    assert c["registration"]["trusted"] is False and c["registration"]["message"]
    assert any("not trusted" in w for w in records[other.series_instance_uid]["warnings"])


def test_followup_off_and_window(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    _, follow = followup_pair(inputs, seed=11, baseline_ml=20.0, growth_ml=1.0, delay_h=0.5)
    records = process_folder(inputs, out, _settings(tmp_path))
    assert {r["series_instance_uid"]: r for r in records}[follow.series_instance_uid][
        "comparison"] is None  # 30 min apart: below min_interval_h
    records = process_folder(inputs, tmp_path / "out2",
                             _settings(tmp_path, "[followup]\nenabled = false\nmin_interval_h = 0.1\n"))
    assert all(r["comparison"] is None for r in records)


def test_every_prior_is_compared_baseline_first(tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    base, first = followup_pair(inputs, seed=31, baseline_ml=25.0, growth_ml=2.0)
    second = later_scan(inputs / "second", seed=31, baseline_ml=25.0, growth_ml=16.0, scan=2,
                        delay_h=48.0)
    records = {r["series_instance_uid"]: r for r in process_folder(inputs, out, _settings(tmp_path))}
    r = records[second.series_instance_uid]
    assert [c["prior_series_instance_uid"] for c in r["comparisons"]] == [
        base.series_instance_uid, first.series_instance_uid]  # most recent last
    assert r["comparison"] == r["comparisons"][0] and r["comparison"]["interval_h"] == 48.0
    assert [c["interval_h"] for c in r["comparisons"]] == [48.0, 24.0]
    assert all(c["registration"]["trusted"] for c in r["comparisons"])
    truth = second.ich_volume_ml - base.ich_volume_ml
    assert abs(r["comparison"]["ich_change_ml"] - truth) <= max(1.5, 0.1 * second.ich_volume_ml)
