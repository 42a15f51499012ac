"""QA checks on held-out phantoms, the real GE scan and the hard cases made by tests/qa_cases.py.

Held-out: seeds 720001.. are used by no other test nor by training. Every phantom and the GE scan
must pass the input checks (no false alarm); every hard case must be caught by the check named.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.config import QASettings
from dicomnode.domain import ICH, IVH, LABELS, LabelMap, QACheck, QAReport
from dicomnode.lab.synth import make_study
from dicomnode.load.volume import load_series
from dicomnode.measure import measure
from dicomnode.qa import compare_readers, input_checks, output_checks
from dicomnode.segment.threshold import ThresholdBackend
from tests import qa_cases
from tests.conftest import GE_DIR

CFG = QASettings()
PHANTOMS = {
    "normal": dict(seed=720001, hemorrhage_ml=None, matrix=64),
    "lobar": dict(seed=720002, hemorrhage_ml=25.0, site="lobar", matrix=64),
    "deep_ivh": dict(seed=720003, hemorrhage_ml=20.0, site="basal_ganglia", ivh=True, matrix=128),
    "cerebellar_thin": dict(seed=720004, hemorrhage_ml=8.0, site="cerebellar", matrix=128,
                            thickness_mm=2.5),
    "large": dict(seed=720005, hemorrhage_ml=80.0, site="lobar", matrix=128),
}
# hard case -> the checks that must catch it (outcome warn or fail)
CAUGHT = {"zeroed": {"air_hu", "brain_hu", "skull"}, "partial": {"coverage_edges"},
          "noisy": {"noise"}, "metal": {"metal"}, "child": {"age"}, "offset": {"brain_hu"}}


def _paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qa")
    out = {name: make_study(root / name, **kw).dicom_dir for name, kw in PHANTOMS.items()}
    for name, make in qa_cases.MAKERS.items():
        out[f"hard-{name}"] = make(out["lobar"], root / f"hard-{name}")
    return out


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_phantoms_pass_every_check(studies: dict[str, Path], name: str) -> None:
    volume = load_series(_paths(studies[name]))
    report = input_checks(volume, CFG)
    labels = ThresholdBackend().segment(volume)
    report = report.extend(output_checks(volume, labels, measure(volume, labels), CFG))
    assert report.status == "pass", [c for c in report.checks if c.outcome != "pass"]
    assert {c.name for c in report.checks} >= {"air_hu", "skull", "noise", "brain_volume"}


@pytest.mark.skipif(not GE_DIR.is_dir(), reason="real GE scan not present")
def test_real_ge_scan_passes_the_input_checks() -> None:
    report = input_checks(load_series(_paths(GE_DIR)), CFG)
    assert report.status == "pass", [c for c in report.checks if c.outcome != "pass"]


@pytest.mark.parametrize("case", sorted(CAUGHT))
def test_hard_cases_are_caught(studies: dict[str, Path], case: str) -> None:
    report = input_checks(load_series(_paths(studies[f"hard-{case}"])), CFG)
    flagged = {c.name for c in report.checks if c.outcome != "pass"}
    assert CAUGHT[case] <= flagged, report.as_record()
    expected = "warn" if case in ("noisy", "metal") and flagged <= set(CFG.warn_only) else "fail"
    assert report.status == expected


def test_warn_only_turns_a_failure_into_a_warning(studies: dict[str, Path]) -> None:
    volume = load_series(_paths(studies["hard-child"]))
    report = input_checks(volume, replace(CFG, warn_only=("age",)))
    assert report.status == "warn" and report.reasons("warn")[0].startswith("age: 8 years")


def test_brain_tissue_labelled_as_blood_fails(studies: dict[str, Path]) -> None:
    """The issue's case: 'ICH' of brain-like HU on a zeroed export is refused, not reported."""
    volume = load_series(_paths(studies["hard-zeroed"]))
    hu = sitk.GetArrayFromImage(volume.image)
    fake = np.zeros(hu.shape, np.uint8)
    fake[hu.shape[0] // 3: 2 * hu.shape[0] // 3][(hu[hu.shape[0] // 3: 2 * hu.shape[0] // 3] > 15)
                                                 & (hu[hu.shape[0] // 3: 2 * hu.shape[0] // 3] < 45)] = ICH
    image = sitk.GetImageFromArray(fake)
    image.CopyInformation(volume.image)
    labels = LabelMap(image, "stand-in", "stand-in", "1")
    report = output_checks(volume, labels, measure(volume, labels), CFG)
    failed = {c.name for c in report.checks if c.outcome == "fail"}
    assert {"brain_volume", "ich_mean_hu", "ich_hu_fraction"} <= failed


def _labels(ich_voxels: int, ivh_voxels: int, *, ivh: bool = True) -> LabelMap:
    arr = np.zeros((10, 20, 20), np.uint8)
    arr.reshape(-1)[:ich_voxels] = ICH
    arr.reshape(-1)[ich_voxels:ich_voxels + ivh_voxels] = IVH
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((10.0, 10.0, 10.0))  # 1 mL voxels
    names = dict(LABELS) if ivh else {ICH: LABELS[ICH]}
    return LabelMap(image, "b", "b", "1", labels=names)


def test_second_reader_agreement_and_disagreement() -> None:
    agree = compare_readers(_labels(20, 5), _labels(24, 6), CFG)
    assert agree.status == "pass" and agree.checks[0].value == 24.0
    disagree = compare_readers(_labels(20, 5), _labels(60, 5), CFG)
    assert disagree.status == "warn" and "disagree" in disagree.reasons("warn")[0]
    combined = compare_readers(_labels(20, 5), _labels(25, 0, ivh=False), CFG)
    assert combined.status == "pass" and combined.checks[1].value is None


def test_second_reader_limit_is_the_larger_of_absolute_and_relative() -> None:
    # 1 mL voxels; defaults: max(5 mL, 50 % of the larger volume)
    cases = {(2, 7): "pass", (2, 8): "warn",  # small: 5 mL absolute decides
             (100, 150): "pass", (100, 40): "warn",  # large: 50 % of the larger decides
             (100, 50): "pass", (0, 5): "pass", (0, 6): "warn"}
    for (a, b), want in cases.items():
        report = compare_readers(_labels(a, 0), _labels(b, 0), CFG)
        ich = report.checks[0]
        assert (ich.outcome, ich.value) == (want, float(b)), (a, b, ich)
        assert f"{b:.1f} mL vs {a:.1f} mL" in ich.message
    strict = replace(CFG, warn_only=())  # not warn_only: a disagreement refuses the series
    assert compare_readers(_labels(2, 0), _labels(9, 0), strict).status == "fail"


def test_report_status_and_record() -> None:
    report = QAReport((QACheck("air_hu", -1000.0, "-1100..-900 HU", "pass"),
                       QACheck("noise", 30.0, "<= 20 HU", "warn", "noise: 30 HU")))
    assert report.status == "warn" and report.as_record()["checks"][1]["outcome"] == "warn"
    with pytest.raises(ValueError, match="outcome"):
        QACheck("x", 1.0, "", "maybe")
    assert QAReport().status == "pass"
