"""SR (TID 1500): valid (dciodvfy), references the SEG, volumes in ml, predictions, UIDs."""

from __future__ import annotations

import dataclasses

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.domain import CAVE_MODEL, ICH, IVH, OEDEMA, CaveScore, Prediction, Risk
from dicomnode.encode import build_seg, build_sr, codes, uids
from tests.unit.encode.cases import Case, concept_name, content_items, dciodvfy

PREDICTION = Prediction(
    expansion=Risk(probability=0.3100004, model="he-logreg", model_version="1.2", synthetic_training=True),
    epilepsy=Risk(probability=0.12, model="pse-rf", model_version="1", synthetic_training=False),
    cave=CaveScore(score=2, partial=False, risk=(0.098, 0.098)),
)
MEASUREMENT_GROUP = ("125007", "DCM")


def _seg(case: Case, version: int = 1):
    return build_seg(case.datasets, case.volume, case.labels, version=version, software_version="0.1.0")


def _sr(case: Case, seg=None, version: int = 1, **kw):
    seg = seg if seg is not None else _seg(case, version)
    kw.setdefault("prediction", PREDICTION)
    return build_sr(case.datasets, seg, case.measurements, case.labels, version=version,
                    software_version="0.1.0", **kw)


def _groups(sr: Dataset) -> list[Dataset]:
    return [i for i in content_items(sr)
            if i.ValueType == "CONTAINER" and concept_name(i) == MEASUREMENT_GROUP]


def _nums(group: Dataset) -> list[Dataset]:
    return [i for i in content_items(group) if i.ValueType == "NUM"]


def _num(group: Dataset, code) -> list[tuple[float, tuple[str, str]]]:
    return [(float(i.MeasuredValueSequence[0].NumericValue),
             codes.as_tuple(i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]))
            for i in _nums(group) if concept_name(i) == codes.as_tuple(code)]


def _code_value(group: Dataset, code) -> list[tuple[str, str]]:
    return [codes.as_tuple(i.ConceptCodeSequence[0]) for i in content_items(group)
            if i.ValueType == "CODE" and concept_name(i) == codes.as_tuple(code)]


def _volumetric(sr: Dataset) -> list[Dataset]:
    """The TID 1411 groups (those referencing a SEG segment)."""
    return [g for g in _groups(sr) if _segment_refs(g)]


def _segment_refs(group: Dataset) -> list[tuple[str, int]]:
    return [(str(r.ReferencedSOPInstanceUID), int(r.ReferencedSegmentNumber))
            for i in content_items(group) if i.ValueType == "IMAGE"
            for r in i.ReferencedSOPSequence if "ReferencedSegmentNumber" in r]


def test_sr_is_valid_and_references_the_seg(plain_case: Case, save) -> None:
    seg = _seg(plain_case)
    sr = _sr(plain_case, seg)
    path = save(sr, "sr.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    # the only warnings: dciodvfy does not know private coding scheme designators
    assert all("99DCMNODE" in w for w in warnings), "\n".join(w for w in warnings if "99DCMNODE" not in w)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert codes.as_tuple(ds.ConceptNameCodeSequence[0]) == ("126000", "DCM")
    assert ds.StudyInstanceUID == plain_case.datasets[0].StudyInstanceUID
    assert ds.SpecificCharacterSet == plain_case.datasets[0].SpecificCharacterSet
    assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99DCMNODE"
    # procedure reported and device observer
    procedures = [codes.as_tuple(i.ConceptCodeSequence[0]) for i in content_items(ds)
                  if i.ValueType == "CODE" and concept_name(i) == ("121058", "DCM")]
    assert procedures == [("303653007", "SCT")]
    assert [codes.as_tuple(i.ConceptCodeSequence[0]) for i in content_items(ds)
            if i.ValueType == "CODE" and concept_name(i) == ("121005", "DCM")] == [("121007", "DCM")]
    models = [i.TextValue for i in content_items(ds)
              if i.ValueType == "TEXT" and concept_name(i) == ("121015", "DCM")]
    assert models == ["ich-unet-test 0.3.1"]
    # one group per finding: ICH, IVH, oedema (all with volume > 0), each referencing its segment
    groups = _volumetric(ds)
    numbers = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}
    tracking = {int(s.SegmentNumber): s.TrackingUID for s in seg.SegmentSequence}
    assert [_segment_refs(g) for g in groups] == [
        [(seg.SOPInstanceUID, numbers[codes.SEGMENTS[v].label])] for v in (ICH, IVH, OEDEMA)
    ]
    for g, v in zip(groups, (ICH, IVH, OEDEMA), strict=True):
        uid = [i.UID for i in content_items(g)
               if i.ValueType == "UIDREF" and concept_name(i) == ("112040", "DCM")]
        assert uid == [tracking[numbers[codes.SEGMENTS[v].label]]]
        assert _code_value(g, codes.TRAINING_DATA) == [codes.as_tuple(codes.SYNTHETIC_DATA)]
    evidence = {str(i.ReferencedSOPInstanceUID) for s in ds.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence


def test_volumes_and_ich_details(plain_case: Case) -> None:
    ds = _sr(plain_case)
    ich, ivh, oedema = _volumetric(ds)
    m = plain_case.measurements
    assert _num(ich, codes.VOLUME) == [(pytest.approx(m.ich_volume_ml), ("ml", "UCUM"))]
    assert _num(ivh, codes.VOLUME) == [(pytest.approx(m.ivh_volume_ml), ("ml", "UCUM"))]
    assert _num(oedema, codes.VOLUME) == [(pytest.approx(m.oedema_volume_ml), ("ml", "UCUM"))]
    assert _num(ich, codes.ABC2_VOLUME) == [(pytest.approx(m.abc2_volume_ml), ("ml", "UCUM"))]
    assert _code_value(ich, codes.HAEMORRHAGE_SITE) == [codes.as_tuple(codes.SITE_LOBAR)]
    assert _code_value(ich, codes.CORTICAL_INVOLVEMENT) == [("373066001", "SCT")]
    assert _code_value(ich, codes.MARKERS["swirl_like"].name) == [("373066001", "SCT")]
    assert _code_value(ich, codes.MARKERS["blend_sign_like"].name) == [("373067005", "SCT")]
    # markers: mean and SD HU as Attenuation Coefficient with a derivation; fraction in percent
    hu = _num(ich, codes.ATTENUATION_COEFFICIENT)
    assert sorted(v for v, _ in hu) == pytest.approx([9.25, 61.5, 62.0])
    assert {u for _, u in hu} == {("[hnsf'U]", "UCUM")}
    assert _num(ich, codes.MARKERS["hypodense_fraction"].name) == [(pytest.approx(12.5), ("%", "UCUM"))]
    assert _num(ich, codes.MARKERS["sphericity"].name) == [(pytest.approx(0.81), ("1", "UCUM"))]
    assert _num(ich, codes.MARKERS["hu_cv"].name) == []  # NaN left out
    # predictions: percent and score, each with its model
    assert _num(ich, codes.HE_RISK) == [(31.0, ("%", "UCUM"))]  # rounded to 0.01 %
    assert _num(ich, codes.PSE_RISK) == [(pytest.approx(12.0), ("%", "UCUM"))]
    assert _num(ich, codes.CAVE_SCORE) == [(2.0, ("{score}", "UCUM"))]
    names = [i.TextValue for i in content_items(ich)
             if i.ValueType == "TEXT" and concept_name(i) == ("111001", "DCM")]
    assert {"ich-unet-test", "he-logreg", "pse-rf", CAVE_MODEL} <= set(names)
    he = next(i for i in _nums(ich) if concept_name(i) == codes.as_tuple(codes.HE_RISK))
    params = [i.TextValue for i in content_items(he) if concept_name(i) == ("111002", "DCM")]
    assert any("fit on synthetic data" in p for p in params)
    cave = next(i for i in _nums(ich) if concept_name(i) == codes.as_tuple(codes.CAVE_SCORE))
    assert not any("synthetic" in i.TextValue for i in content_items(cave) if i.ValueType == "TEXT")
    # nothing about predictions outside the ICH group
    assert _num(ivh, codes.HE_RISK) == [] and _num(ivh, codes.ABC2_VOLUME) == []


def test_groups_follow_the_findings(plain_case: Case) -> None:
    m = dataclasses.replace(plain_case.measurements, ivh_volume_ml=0.0, oedema_volume_ml=0.0)
    seg = _seg(plain_case)
    ds = build_sr(plain_case.datasets, seg, m, plain_case.labels, version=1)
    groups = _volumetric(ds)
    assert len(groups) == 1 and _segment_refs(groups[0]) == [(seg.SOPInstanceUID, 1)]
    assert len(_groups(ds)) == 4  # + the ICH outline and the A and B lines
    assert _num(groups[0], codes.HE_RISK) == []  # no predictions given


def test_report_says_whether_haemorrhage_was_found(plain_case: Case) -> None:
    """TID 1500 row 12: "Intracranial hemorrhage" Present or Absent, from the haemorrhage volumes."""

    def overall(m) -> list[tuple[tuple[str, str], tuple[str, str]]]:  # type: ignore[no-untyped-def]
        sr = build_sr(plain_case.datasets, seg, m, plain_case.labels, version=1)
        (container,) = [i for i in sr.ContentSequence
                        if concept_name(i) == codes.as_tuple(codes.QUALITATIVE_EVALUATIONS)]
        assert container.RelationshipType == "CONTAINS"
        return [(concept_name(i), codes.as_tuple(i.ConceptCodeSequence[0]))
                for i in container.ContentSequence]

    seg = _seg(plain_case)
    finding = codes.as_tuple(codes.INTRACRANIAL_HAEMORRHAGE)
    m = plain_case.measurements
    assert overall(m) == [(finding, codes.as_tuple(codes.PRESENT))]
    none = dataclasses.replace(m, ich_volume_ml=0.0, ivh_volume_ml=0.0, extra_axial_volume_ml=0.0)
    assert overall(none) == [(finding, codes.as_tuple(codes.ABSENT))]  # oedema alone is no haemorrhage
    assert overall(dataclasses.replace(none, extra_axial_volume_ml=1.5)) == \
        [(finding, codes.as_tuple(codes.PRESENT))]


def test_uids_are_deterministic_per_version(plain_case: Case) -> None:
    a, b, c = _sr(plain_case), _sr(plain_case), _sr(plain_case, version=2)
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert a.SeriesInstanceUID != c.SeriesInstanceUID and a.SOPInstanceUID != c.SOPInstanceUID
    src = plain_case.volume.series_instance_uid
    assert a.SOPInstanceUID == uids.instance_uid(src, 1, "sr", 0)
    assert a.SeriesInstanceUID == uids.series_uid(src, 1, "sr") != uids.series_uid(src, 1, "seg")


@pytest.mark.parametrize("bad", [
    lambda: Risk(probability=1.5, model="x", model_version="1", synthetic_training=False),
    lambda: Risk(probability=float("nan"), model="x", model_version="1", synthetic_training=False),
    lambda: Risk(probability=0.2, model="", model_version="1", synthetic_training=False),
    lambda: CaveScore(score="high", partial=False, risk=(0.0, 0.0)),  # type: ignore[arg-type]
    lambda: CaveScore(score=5, partial=False, risk=(0.0, 0.0)),
])
def test_malformed_predictions_are_rejected(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="prediction"):
        bad()


def test_seg_of_another_series_is_rejected(plain_case: Case, tilted_case: Case) -> None:
    with pytest.raises(ValueError, match="SEG references series"):
        build_sr(plain_case.datasets, _seg(tilted_case), plain_case.measurements, plain_case.labels,
                 version=1)
