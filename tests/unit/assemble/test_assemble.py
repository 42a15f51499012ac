"""Assembly: geometry, eligibility rules, completion, exactly-once jobs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from dicomnode.assemble.selection import Sibling, evaluate
from dicomnode.assemble.series import sweep
from dicomnode.assemble.stack_summary import series_geometry
from dicomnode.config import AssemblySettings, EligibilitySettings
from dicomnode.db.models import Job, Series, utcnow
from dicomnode.receive.checks import read_header
from dicomnode.receive.instance_store import InstanceStore
from tests.conftest import GE_DIR
from tests.ct_series import make_series
from tests.stores import open_store
from tests.unit.receive.test_instance_store import put

RULES = EligibilitySettings()


def test_ge_tilt_and_uneven_spacing_from_headers() -> None:
    geoms = [read_header(pydicom.dcmread(p, stop_before_pixels=True))[1]
             for p in sorted(GE_DIR.glob("*.dcm"))]
    g = series_geometry(geoms)
    assert g["n_frames"] == 28 and g["orientation_consistent"]
    assert g["tilt_deg"] == pytest.approx(18.5, abs=0.1)
    assert g["uneven_spacing"] is True
    assert g["spacing_mm"]["min"] == pytest.approx(1.08, abs=0.05)
    assert g["spacing_mm"]["max"] == pytest.approx(7.0, abs=0.05)


def test_regular_series_geometry_and_duplicates() -> None:
    iop = [1, 0, 0, 0, 1, 0]
    geoms = [{"ipp": [0, 0, z], "iop": iop} for z in (0, 5, 10, 10, 15)]
    g = series_geometry(geoms)
    assert g["tilt_deg"] == 0 and g["duplicate_positions"] == 1
    assert g["spacing_mm"]["median"] == 5 and not g["uneven_spacing"]
    assert g["extent_mm"] == 15
    # A tilted stack: positions move along z while the normal leans by 20 degrees.
    t = math.radians(20)
    tilted = [{"ipp": [0, 0, z], "iop": [1, 0, 0, 0, math.cos(t), math.sin(t)]}
              for z in range(0, 50, 5)]
    assert series_geometry(tilted)["tilt_deg"] == pytest.approx(20, abs=0.01)
    mixed = geoms[:2] + [{"ipp": [0, 0, 20], "iop": [1, 0, 0, 0, 0, -1]}]
    assert series_geometry(mixed)["orientation_consistent"] is False


def _attrs(**kw: object) -> dict:
    a = {"modality": "CT", "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"], "body_part": "HEAD",
         "series_description": "Head", "slice_thickness_mm": 5.0, "kernel": "STANDARD",
         "columns": 512, "pixel_spacing_mm": [0.45, 0.45]}
    a.update(kw)
    return a


GOOD_GEOMETRY = {"n_frames": 30, "missing_geometry": 0, "orientation_consistent": True,
                 "axial_angle_deg": 0.0, "extent_mm": 145.0}


@pytest.mark.parametrize(("attrs", "geometry", "fragment"), [
    (_attrs(), GOOD_GEOMETRY, None),
    (_attrs(image_type=["ORIGINAL", "PRIMARY", "AXIAL", "ADD"]), GOOD_GEOMETRY, None),
    (_attrs(modality="MR"), GOOD_GEOMETRY, "modality"),
    (_attrs(image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]), GOOD_GEOMETRY, "localizer"),
    (_attrs(image_type=["DERIVED", "SECONDARY", "AXIAL"]), GOOD_GEOMETRY, "does not start"),
    (_attrs(image_type=["ORIGINAL", "PRIMARY", "REFORMATTED"]), GOOD_GEOMETRY, "not AXIAL"),
    (_attrs(series_description="Dose Report"), GOOD_GEOMETRY, "excluded pattern"),
    (_attrs(series_description="DOSE_INFO"), GOOD_GEOMETRY, "excluded pattern"),
    (_attrs(series_description="Patient Protocol"), GOOD_GEOMETRY, "excluded pattern"),
    (_attrs(series_description="Head low dose 5mm"), GOOD_GEOMETRY, None),  # a plain NCCT
    (_attrs(slice_thickness_mm=10.0), GOOD_GEOMETRY, "thickness"),
    (_attrs(), {**GOOD_GEOMETRY, "orientation_consistent": False}, "orientation"),
    (_attrs(), {**GOOD_GEOMETRY, "axial_angle_deg": 90.0}, "not axial"),
    (_attrs(body_part="ABDOMEN", series_description="Abdomen", columns=512,
            pixel_spacing_mm=[0.8, 0.8]), {**GOOD_GEOMETRY, "extent_mm": 400.0}, "head CT"),
    # No body part and no description, but the extent and field of view fit a head.
    (_attrs(body_part="", series_description=""), GOOD_GEOMETRY, None),
    (_attrs(pixel_spacing_mm=[-0.45, 0.45]), GOOD_GEOMETRY, "not positive"),
    (_attrs(), {**GOOD_GEOMETRY, "mixed": ["2 matrix sizes"]}, "mixed series"),
])
def test_eligibility_rules(attrs: dict, geometry: dict, fragment: str | None) -> None:
    reason = evaluate(attrs, geometry, 30, RULES)
    if fragment is None:
        assert reason is None
    else:
        assert reason is not None and fragment in reason


def test_bone_kernel_is_a_preference_not_a_filter() -> None:
    bone = _attrs(kernel="BONE")
    assert evaluate(bone, GOOD_GEOMETRY, 30, RULES) is None
    soft = [Sibling("1.2.3", "STANDARD", "queued")]
    assert "preferred" in evaluate(bone, GOOD_GEOMETRY, 30, RULES, soft)
    assert evaluate(bone, GOOD_GEOMETRY, 30, RULES, [Sibling("1.2.3", "BONE", "queued")]) is None


def test_two_reconstructions_in_one_series_show_as_mixed() -> None:
    one = {"ipp": [0, 0, 0], "iop": [1, 0, 0, 0, 1, 0], "matrix": [512, 512],
           "pixel_spacing_mm": [0.45, 0.45]}
    other = {**one, "ipp": [0, 0, 5], "matrix": [256, 256], "pixel_spacing_mm": [0.9, 0.9]}
    assert series_geometry([one, other])["mixed"] == ["2 matrix sizes",
                                                      "different pixel spacings"]
    assert "mixed" not in series_geometry([one, {**one, "ipp": [0, 0, 5]}])


def test_too_few_instances() -> None:
    assert "fewer" in evaluate(_attrs(), {**GOOD_GEOMETRY, "n_frames": 3}, 3, RULES)


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[InstanceStore]:
    with open_store(tmp_path / "s", db_url) as opened:
        yield opened


def test_completion_waits_for_settle_then_queues_exactly_once(store: InstanceStore,
                                                               ct_template: Dataset) -> None:
    for ds in make_series(ct_template, 12):
        put(store, ds)
    assembly = AssemblySettings(settle_s=10)
    assert sweep(store.sessions, assembly, RULES) == []  # still settling
    later = utcnow() + timedelta(seconds=11)
    done = sweep(store.sessions, assembly, RULES, now=later)
    assert [d.state for d in done] == ["queued"]
    assert sweep(store.sessions, assembly, RULES, now=later) == []
    with store.sessions() as s:
        assert s.scalar(select(func.count(Job.id))) == 1
        series = s.scalar(select(Series))
        assert series.geometry["instances"] == 12 and series.completed_at is not None


def test_short_count_waits_then_goes_ahead_with_warning(store: InstanceStore,
                                                        ct_template: Dataset) -> None:
    for ds in make_series(ct_template, 12, images_in_acquisition=14):
        put(store, ds)
    assembly = AssemblySettings(settle_s=1, max_wait_incomplete_s=60)
    assert sweep(store.sessions, assembly, RULES, now=utcnow() + timedelta(seconds=5)) == []
    with store.sessions() as s:
        assert s.scalar(select(Series.reason)) == "waiting: 12 of 14 instances"
    done = sweep(store.sessions, assembly, RULES, now=utcnow() + timedelta(seconds=61))
    assert done[0].state == "queued"
    with store.sessions() as s:
        assert "12 of 14" in s.scalar(select(Series.reason))


def test_late_instances_make_a_new_version_and_a_new_job(store: InstanceStore,
                                                          ct_template: Dataset) -> None:
    series = make_series(ct_template, 13)
    for ds in series[:12]:
        put(store, ds)
    assembly = AssemblySettings(settle_s=0)
    first = sweep(store.sessions, assembly, RULES, now=utcnow() + timedelta(seconds=1))
    put(store, series[12])
    second = sweep(store.sessions, assembly, RULES, now=utcnow() + timedelta(seconds=1))
    assert [(d.version, d.state) for d in first + second] == [(1, "queued"), (2, "queued")]
    assert first[0].job_id != second[0].job_id


def test_rejected_series_records_reason(store: InstanceStore, ct_template: Dataset) -> None:
    for ds in make_series(ct_template, 12, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]):
        put(store, ds)
    done = sweep(store.sessions, AssemblySettings(settle_s=0), RULES,
                 now=utcnow() + timedelta(seconds=1))
    assert done[0].state == "rejected"
    with store.sessions() as s:
        assert "localizer" in s.scalar(select(Series.reason))
        assert s.scalar(select(func.count(Job.id))) == 0
