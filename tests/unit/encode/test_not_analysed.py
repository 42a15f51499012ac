"""The "not analysed" key image and SR (docs/qa.md): the SR is a TID 1500 Measurement Report whose
report-level Qualitative Evaluations say, coded, that the analysis was not performed and why, with
no measurement and no number; both objects are dciodvfy-clean and in the source study."""

from __future__ import annotations

import highdicom as hd
import pydicom
import pytest

from dicomnode.domain import QACheck, QAReport
from dicomnode.encode import codes
from dicomnode.encode.not_analysed import build_not_analysed_image, build_not_analysed_sr
from tests.unit.encode.cases import Case, concept_name, content_items, dciodvfy

QA = QAReport((
    QACheck("air_hu", 0.0, "-1100..-900 HU", "fail", "HU calibration: air at 0 HU"),
    QACheck("skull", 0.0, ">= 0.5", "fail", "skull: no bone around the brain"),
    QACheck("metal", 2.0, "<= 1", "warn", "metal: streaks on 2 slices"),
    QACheck("age", 60.0, ">= 18 y", "pass", ""),
))


def _only_99dcmnode(warnings: list[str]) -> bool:
    return all("99DCMNODE" in w for w in warnings)


def test_sr_is_a_tid1500_report_without_numbers(plain_case: Case, save) -> None:
    path = save(build_not_analysed_sr(plain_case.datasets, QA, version=2, software_version="0.1"),
                "sr.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    assert _only_99dcmnode(warnings), "\n".join(warnings)
    ds = pydicom.dcmread(path)
    source = plain_case.datasets[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert codes.as_tuple(ds.ConceptNameCodeSequence[0]) == ("126000", "DCM")
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    assert len(evidence.ReferencedSOPSequence) == len(plain_case.datasets)
    items = list(content_items(ds))
    assert not [i for i in items if i.ValueType == "NUM"]
    names = {concept_name(i) for i in items}
    assert ("126010", "DCM") not in names  # no Imaging Measurements container
    assert ("121058", "DCM") in names  # procedure reported
    (evaluations,) = [i for i in ds.ContentSequence if concept_name(i) == ("C0034375", "UMLS")]
    coded = {concept_name(i): codes.as_tuple(i.ConceptCodeSequence[0])
             for i in evaluations.ContentSequence if i.ValueType == "CODE"}
    assert coded == {codes.as_tuple(codes.ANALYSIS_PERFORMED): codes.as_tuple(codes.NO),
                     codes.as_tuple(codes.REASON_NOT_ANALYSED): codes.as_tuple(codes.QA_FAILED)}
    texts = [(concept_name(i), i.TextValue) for i in evaluations.ContentSequence if i.ValueType == "TEXT"]
    assert texts[0] == (codes.as_tuple(codes.NOT_ANALYSED), "not analysed: HU calibration: air at 0 HU")
    checks = [t for n, t in texts if n == codes.as_tuple(codes.QA_CHECK)]
    assert [c.split(":")[0] for c in checks] == ["air_hu", "skull", "metal"]  # the pass is left out
    report = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_sr_needs_a_failed_check(plain_case: Case) -> None:
    warned = QAReport((QACheck("metal", 2.0, "<= 1", "warn", "metal"),))
    with pytest.raises(ValueError, match="failed check"):
        build_not_analysed_sr(plain_case.datasets, warned, version=1)
    with pytest.raises(ValueError, match="no source"):
        build_not_analysed_sr([], QA, version=1)


def test_key_image_is_valid_and_says_why(plain_case: Case, save) -> None:
    image = build_not_analysed_image(plain_case.datasets, plain_case.volume, QA, version=2)
    path = save(image, "not-analysed.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == plain_case.datasets[0].StudyInstanceUID
    assert ds.BurnedInAnnotation == "YES" and "HU calibration: air at 0 HU" in ds.ImageComments
    rgb = ds.pixel_array
    assert rgb.shape == (512, 1024, 3)
    # the red title is burned in on the right half (the text panel), not only in the header
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    assert red[:, 512:].sum() > 200
