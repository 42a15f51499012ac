"""dicomnode.compare on synthetic baseline + repositioned follow-up pairs (truth label maps)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.compare import (
    ExpansionRule,
    ScanKey,
    choose_priors,
    compare_scans,
    compare_with_plane,
    patient_key,
    same_patient,
    scan_datetime,
)
from dicomnode.compare.plane import prior_plane
from dicomnode.domain import ICH, FollowupScan
from dicomnode.lab.synth.study import StudyTruth
from dicomnode.load.volume import load_series
from tests.followup_cases import followup_pair


def _scan(truth: StudyTruth, he: float | None = None) -> FollowupScan:
    volume = load_series(sorted(truth.dicom_dir.glob("*.dcm")))
    return FollowupScan(truth.series_instance_uid, datetime.fromisoformat(truth.details["acquired"]),
                        volume.image, sitk.ReadImage(str(truth.label_path)), he)


def _tolerance_ml(follow: StudyTruth) -> float:
    return max(1.5, 0.1 * follow.ich_volume_ml)


@pytest.mark.parametrize(("growth_ml", "expanded"), [(2.0, False), (16.0, True)])
def test_growth_either_side_of_6_ml(tmp_path: Path, growth_ml: float, expanded: bool) -> None:
    base, follow = followup_pair(tmp_path, seed=31, baseline_ml=25.0, growth_ml=growth_ml)
    c = compare_scans(_scan(base, 0.4), _scan(follow), ExpansionRule())
    truth = follow.ich_volume_ml - base.ich_volume_ml
    assert (truth > 6.0) is expanded and abs(truth - 6.0) > 1.5  # clearly on one side
    assert abs(c.ich_change_ml - truth) <= _tolerance_ml(follow)
    assert c.expansion is expanded and c.expansion is ExpansionRule().expanded(
        base.ich_volume_ml, follow.ich_volume_ml)
    assert c.registration.trusted, c.registration
    assert c.registration.metric_value is not None and c.registration.correlation >= 0.85
    tx, ty, tz = c.registration.parameters[3:]  # the follow-up was moved by (4, -3, 2.5) mm
    assert abs(tx - 4.0) < 1.5 and abs(ty + 3.0) < 1.5 and abs(tz - 2.5) < 2.5
    assert c.interval_h == 24.0 and c.prior_he_probability == 0.4
    assert c.definition == "ICH growth > 6 mL or > 33 %" and not c.new_ivh
    record = c.as_record()
    assert record["registration"]["trusted"] is True and record["ich_change_pct"] is not None


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_prior_on_the_followup_key_slice(tmp_path: Path) -> None:
    base, follow = followup_pair(tmp_path, seed=31, baseline_ml=25.0, growth_ml=0.0,
                                 shift_mm=(8.0, -6.0, 5.0))
    prior, current = _scan(base), _scan(follow)
    lab = sitk.GetArrayViewFromImage(current.labels)
    z = int(np.argmax((lab == ICH).sum(axis=(1, 2))))
    c, plane = compare_with_plane(prior, current, ExpansionRule(), key_slice=z)
    assert c == compare_scans(prior, current, ExpansionRule())  # the same comparison
    assert plane.registered and plane.z == z and plane.hu.shape == lab[z].shape
    assert plane.spacing_mm == (current.image.GetSpacing()[1], current.image.GetSpacing()[0])
    # No growth: once registered, the baseline's ICH lies on the follow-up's (the raw slice
    # of the moved head does not).
    registered = _dice(plane.labels == ICH, lab[z] == ICH)
    raw = _dice(sitk.GetArrayViewFromImage(prior.labels)[z] == ICH, lab[z] == ICH)
    assert registered > 0.8 and registered > raw + 0.1, (registered, raw)
    assert 40 < float(np.median(plane.hu[plane.labels == ICH])) < 100  # blood, not air or bone
    # Without a key slice: the follow-up slice holding the baseline's ICH centroid.
    _, found = compare_with_plane(prior, current, ExpansionRule(), key_slice=None)
    assert abs(found.z - z) <= 1 and (found.labels == ICH).any()
    # A failed registration: the baseline's own largest-ICH slice, marked not registered.
    own = prior_plane(prior.image, prior.labels, current.image, None, z)
    prior_lab = sitk.GetArrayViewFromImage(prior.labels)
    assert not own.registered and own.z == z
    assert (own.labels == ICH).sum() == (prior_lab == ICH).sum(axis=(1, 2)).max()


def test_new_ivh_and_alternative_definition(tmp_path: Path) -> None:
    base, follow = followup_pair(tmp_path, seed=11, baseline_ml=20.0, growth_ml=8.0, site="deep",
                                 new_ivh=True)
    assert base.ivh_volume_ml == 0.0 and follow.ivh_volume_ml > 1.0
    c = compare_scans(_scan(base), _scan(follow), ExpansionRule(abs_ml=12.5, rel=0.26))
    assert c.new_ivh and c.ivh_change_ml == pytest.approx(follow.ivh_volume_ml, abs=0.01)
    growth = follow.ich_volume_ml - base.ich_volume_ml
    assert c.expansion is (growth > 12.5 or growth > 0.26 * base.ich_volume_ml)
    assert c.definition == "ICH growth > 12.5 mL or > 26 %"


def test_unrelated_scans_of_one_patient_id_are_reported(tmp_path: Path) -> None:
    base, _ = followup_pair(tmp_path / "a", seed=11, baseline_ml=20.0, growth_ml=1.0)
    other, _ = followup_pair(tmp_path / "b", seed=12, baseline_ml=20.0, growth_ml=1.0,
                             patient_id=base.patient_id)
    c = compare_scans(_scan(base), _scan(other), ExpansionRule())
    assert not c.registration.trusted
    assert "correlation" in c.registration.message


def test_matching_keys_order_and_window() -> None:
    attrs = {"patient_id": "P1", "issuer_of_patient_id": "", "patient_birth_date": "19500101",
             "patient_sex": "M", "acquisition_date": "20240102", "acquisition_time": "101500.5",
             "series_date": "20230101"}
    assert patient_key(attrs) == ("P1", "", "19500101", "M")
    assert scan_datetime(attrs) == datetime(2024, 1, 2, 10, 15, 0, 500000)
    assert scan_datetime({"series_date": "20240103", "study_date": "20240101"}) == datetime(2024, 1, 3)
    assert scan_datetime({"acquisition_datetime": "20240104083000+0100"}) == datetime(2024, 1, 4, 8, 30)
    assert scan_datetime({"study_date": "garbage"}) is None
    assert patient_key({"patient_id": ""}) == ()
    assert same_patient(("P1", "", "19500101", "M"), ("P1", "", "", ""))
    assert not same_patient(("P1", "", "19500101", "M"), ("P1", "", "19600101", "F"))
    assert not same_patient(("P1", "A", "", ""), ("P1", "B", "", ""))
    p = ("P1", "", "", "")
    scans = [ScanKey("1.1", p, datetime(2024, 1, 1, 8)), ScanKey("1.2", p, datetime(2024, 1, 1, 8, 30)),
             ScanKey("1.3", p, datetime(2024, 1, 2, 8)), ScanKey("1.4", ("P2", "", "", ""),
                                                                  datetime(2024, 1, 1, 8)),
             ScanKey("1.5", p, datetime(2023, 1, 1))]
    current = ScanKey("1.6", p, datetime(2024, 1, 3, 8))
    got = choose_priors(current, scans, min_interval_h=1.0, max_interval_h=336.0)
    assert [s.series_instance_uid for s in got] == ["1.1", "1.2", "1.3"]
    near = ScanKey("1.7", p, datetime(2024, 1, 1, 8, 40))
    assert [s.series_instance_uid for s in choose_priors(near, scans, min_interval_h=1.0,
                                                          max_interval_h=336.0)] == []


def test_followup_settings_are_validated(tmp_path: Path) -> None:
    from dicomnode.config import load_settings
    from dicomnode.errors import ConfigError

    config = tmp_path / "c.toml"
    config.write_text("[followup]\nexpansion_abs_ml = 12.5\nexpansion_rel = 0.26\n")
    f = load_settings(config).followup
    assert (f.expansion_abs_ml, f.expansion_rel, f.max_interval_h) == (12.5, 0.26, 336.0)
    config.write_text("[followup]\nmin_interval_h = 400\nbogus = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert "min_interval_h" in str(err.value) and "bogus" in str(err.value)
