"""SR planar groups: outlines and ABC/2 lines with image coordinates, the part a viewer draws.

Regression for the SR that OHIF 3.13 could not open: every measurement group must be drawable,
i.e. its Tracking UID must belong to a group with image coordinates (SCOORD), since OHIF merges
groups by Tracking UID and reads ``coords[0]`` of each. That holds for the report of a normal
scan too (ICH at 0 mL, no pixel to outline): docs/viewer.md "The report of a normal scan".
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dicomnode.domain import ICH, IVH, OEDEMA, Measurements
from dicomnode.encode import build_seg, build_sr, codes
from dicomnode.encode.sr_planar import key_frames
from dicomnode.geometry.source_grid import to_source_grid
from dicomnode.lab.synth import make_study
from dicomnode.measure.volumes import abc2
from tests.unit.encode.cases import Case, _case, concept_name, content_items, dciodvfy

GROUP = ("125007", "DCM")
TRACKING_UID = ("112040", "DCM")
IMAGE_REGION = ("111030", "DCM")


def _groups(sr: Dataset) -> list[Dataset]:
    return [i for i in content_items(sr) if i.ValueType == "CONTAINER" and concept_name(i) == GROUP]


def _uid(group: Dataset) -> str:
    return next(str(i.UID) for i in group.ContentSequence if concept_name(i) == TRACKING_UID)


def _identifier(group: Dataset) -> str:
    return next(str(i.TextValue) for i in group.ContentSequence if concept_name(i) == ("112039", "DCM"))


def _regions(group: Dataset) -> list[Dataset]:
    """SCOORD items directly in the group (TID 1410 Image Region)."""
    return [i for i in group.ContentSequence if i.ValueType == "SCOORD"]


def _inferred(group: Dataset) -> list[tuple[Dataset, Dataset]]:
    """(NUM, SCOORD) pairs where the NUM is INFERRED FROM image coordinates (TID 300/320)."""
    return [(n, c) for n in group.ContentSequence if n.ValueType == "NUM"
            for c in n.get("ContentSequence", []) if c.ValueType == "SCOORD"]


def _value(num: Dataset) -> float:
    return float(num.MeasuredValueSequence[0].NumericValue)


@pytest.fixture(scope="module")
def built(plain_case: Case) -> tuple[Dataset, Dataset]:
    seg = build_seg(plain_case.datasets, plain_case.volume, plain_case.labels, version=1,
                    software_version="0.1.0")
    sr = build_sr(plain_case.datasets, seg, plain_case.measurements, plain_case.labels, version=1,
                    software_version="0.1.0")
    return seg, sr


def _assert_drawable(sr: Dataset) -> None:
    groups = _groups(sr)
    drawable = {_uid(g) for g in groups if _regions(g) or _inferred(g)}
    assert {_uid(g) for g in groups} == drawable
    for g in groups:
        for scoord in [*_regions(g), *(c for _, c in _inferred(g))]:
            # exactly one SELECTED FROM image, so a viewer finds the image the points lie on
            (image,) = scoord.ContentSequence
            assert image.RelationshipType == "SELECTED FROM" and image.ValueType == "IMAGE"
            assert len(image.ReferencedSOPSequence) == 1


def test_every_group_is_drawable(built: tuple[Dataset, Dataset]) -> None:
    _assert_drawable(built[1])


def test_outlines_match_the_seg_key_frames(built: tuple[Dataset, Dataset], plain_case: Case) -> None:
    seg, sr = built
    frames = key_frames(seg)
    numbers = {codes.segment_concept(v).label: n for v, n in
               ((v, int(s.SegmentNumber)) for s in seg.SegmentSequence
                for v in (ICH, IVH, OEDEMA) if s.SegmentLabel == codes.segment_concept(v).label)}
    tracking = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    planar = [g for g in _groups(sr) if _regions(g)]
    assert [_identifier(g) for g in planar] == ["ICH v1", "IVH v1", "Perihaematomal oedema v1"]
    for g in planar:
        label = _identifier(g).rsplit(" v", 1)[0]
        number = numbers[label]
        assert _uid(g) == tracking[number]  # the same finding as its volumetric group
        (region,) = _regions(g)
        assert concept_name(region) == IMAGE_REGION and region.GraphicType == "POLYLINE"
        pts = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)  # (column, row)
        assert (pts[0] == pts[-1]).all()
        key = frames[number]
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == key.sop_instance_uid
        # the polygon runs along the edges of the key frame's mask: its bounding box is the mask's
        rows, cols = np.nonzero(key.mask)
        assert pts[:, 0].min() >= cols.min() and pts[:, 0].max() <= cols.max() + 1
        assert pts[:, 1].min() >= rows.min() and pts[:, 1].max() <= rows.max() + 1
        areas = [_value(n) for n in g.ContentSequence if n.ValueType == "NUM"
                 and concept_name(n) == codes.as_tuple(codes.AREA)]
        if label == "Perihaematomal oedema":
            assert areas == []  # a ring: its outline encloses the haematoma
        else:
            x, y = pts[:, 0], pts[:, 1]
            polygon_px = abs(0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])))
            row_mm, col_mm = key.pixel_spacing_mm
            assert areas == [pytest.approx(polygon_px * row_mm * col_mm, abs=0.01)]
            assert polygon_px <= key.mask.sum() + 1e-6


def test_abc2_lines_are_the_abc2_a_and_b(built: tuple[Dataset, Dataset], plain_case: Case) -> None:
    seg, sr = built
    lines = {_identifier(g): _inferred(g) for g in _groups(sr) if _inferred(g)}
    assert sorted(lines) == ["ICH A v1", "ICH B v1"]
    spacing = tuple(float(s) for s in plain_case.volume.image.GetSpacing()[::-1])
    lab = to_source_grid(plain_case.labels.image, plain_case.volume)
    expected = abc2(lab == ICH, spacing)  # type: ignore[arg-type]
    key = key_frames(seg)[1]
    ends = {}
    for name, want, code in (("ICH A v1", expected.a_mm, codes.ABC2_A),
                             ("ICH B v1", expected.b_mm, codes.ABC2_B)):
        ((num, scoord),) = lines[name]
        assert concept_name(num) == codes.as_tuple(code)
        assert _value(num) == pytest.approx(want, abs=0.01)
        assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
        pts = np.asarray(scoord.GraphicData, dtype=float).reshape(2, 2)
        row_mm, col_mm = key.pixel_spacing_mm
        d = (pts[1] - pts[0]) * [col_mm, row_mm]
        assert float(np.hypot(*d)) == pytest.approx(want, abs=0.01)  # the line drawn is the number
        assert scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
            key.sop_instance_uid
        ends[name] = d
    assert abs(float(ends["ICH A v1"] @ ends["ICH B v1"])) < 1e-3 * expected.a_mm * expected.b_mm


def test_tilted_series_planar_groups_reference_source_images(tilted_case: Case, save) -> None:
    seg = build_seg(tilted_case.datasets, tilted_case.volume, tilted_case.labels, version=1,
                    software_version="0.1.0")
    sr = build_sr(tilted_case.datasets, seg, tilted_case.measurements, tilted_case.labels, version=1,
                    software_version="0.1.0")
    errors, _ = dciodvfy(save(sr, "sr.dcm"))
    assert errors == [], "\n".join(errors)
    sources = {str(ds.SOPInstanceUID) for ds in tilted_case.headers}
    scoords = [c for g in _groups(sr) for c in [*_regions(g), *(c for _, c in _inferred(g))]]
    assert len(scoords) == 5  # ICH, IVH, oedema outlines; A and B
    assert {str(c.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for c in scoords} <= sources


# ---------------------------------------------------------------- the report of a normal scan
NORMAL = Measurements(ich_volume_ml=0.0, ivh_volume_ml=0.0, abc2_volume_ml=0.0, largest_area_slice=None,
                      cortical_involvement=False, site="none", markers={}, oedema_volume_ml=0.0)
COMMENT = codes.as_tuple(codes.COMMENT)


@pytest.fixture(scope="module")
def normal_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    study = make_study(tmp_path_factory.mktemp("enc-normal"), seed=11, matrix=64, thickness_mm=5.0,
                       hemorrhage_ml=None)
    return dataclasses.replace(_case(study, tilted=False), measurements=NORMAL)


def _build(case: Case, measurements: Measurements) -> tuple[Dataset, Dataset]:
    seg = build_seg(case.datasets, case.volume, case.labels, version=1, software_version="0.1.0")
    return seg, build_sr(case.datasets, seg, measurements, case.labels, version=1, software_version="0.1.0")


def _overall(sr: Dataset) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """TID 1500 report-level Qualitative Evaluations: (concept, value) of each CODE item."""
    (container,) = [i for i in sr.ContentSequence
                    if concept_name(i) == codes.as_tuple(codes.QUALITATIVE_EVALUATIONS)]
    return [(concept_name(i), codes.as_tuple(i.ConceptCodeSequence[0])) for i in container.ContentSequence]


def _middle_headers(case: Case) -> list[Dataset]:
    """The central source plane (the two central ones of an even count), by position."""
    normal = np.cross(*np.asarray(case.headers[0].ImageOrientationPatient, float).reshape(2, 3))
    ordered = sorted(case.headers, key=lambda h: float(np.asarray(h.ImagePositionPatient, float) @ normal))
    n = len(ordered)
    return ordered[(n - 1) // 2:n // 2 + 1]


def test_normal_scan_report_is_drawable_and_says_absent(normal_case: Case, save) -> None:
    seg, sr = _build(normal_case, NORMAL)
    path = save(sr, "sr.dcm")
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    sr = pydicom.dcmread(path)
    _assert_drawable(sr)
    assert _overall(sr) == [(codes.as_tuple(codes.INTRACRANIAL_HAEMORRHAGE), codes.as_tuple(codes.ABSENT))]
    volumetric, read = [g for g in _groups(sr) if _uid(g) == str(seg.SegmentSequence[0].TrackingUID)][::-1]
    # the 0 mL ICH group is still there (ICH always), referencing the SEG's (empty) ICH segment
    volume = [_value(n) for n in volumetric.ContentSequence if n.ValueType == "NUM"
              and concept_name(n) == codes.as_tuple(codes.VOLUME)]
    assert volume == [0.0] and any(i.ValueType == "IMAGE" for i in volumetric.ContentSequence)
    assert _identifier(read) == "ICH v1" and not _regions(read)  # TID 1501: OHIF shows its Comment
    ((area, scoord),) = _inferred(read)
    assert concept_name(area) == codes.as_tuple(codes.AREA) and _value(area) == 0.0
    middle = _middle_headers(normal_case)
    rows, cols = int(middle[0].Rows), int(middle[0].Columns)
    assert np.asarray(scoord.GraphicData, float).reshape(-1, 2).tolist() == \
        [[0, 0], [cols, 0], [cols, rows], [0, rows], [0, 0]]  # the whole image that was read
    ref = scoord.ContentSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID in {h.SOPInstanceUID for h in middle}
    assert [codes.as_tuple(i.ConceptCodeSequence[0]) for i in read.ContentSequence
            if concept_name(i) == codes.as_tuple(codes.PRESENCE)] == [codes.as_tuple(codes.ABSENT)]
    assert [i.TextValue for i in read.ContentSequence if concept_name(i) == COMMENT] == ["No ICH detected"]
    assert len(_groups(sr)) == 2


def test_finding_with_volume_but_no_pixel_is_not_called_absent(normal_case: Case) -> None:
    # IVH measured on the model's grid but lost on the source planes: an empty segment, 0.2 mL
    _, sr = _build(normal_case, dataclasses.replace(NORMAL, ivh_volume_ml=0.2))
    _assert_drawable(sr)
    assert _overall(sr) == [(codes.as_tuple(codes.INTRACRANIAL_HAEMORRHAGE), codes.as_tuple(codes.PRESENT))]
    read = [g for g in _groups(sr) if _identifier(g) == "IVH v1" and _inferred(g)]
    (group,) = read
    assert [i.TextValue for i in group.ContentSequence if concept_name(i) == COMMENT] == \
        ["IVH 0.20 ml: no pixel on the source images"]
    assert not [i for i in group.ContentSequence if concept_name(i) == codes.as_tuple(codes.PRESENCE)]


def test_ich_absent_beside_ivh_is_read_on_a_seg_frame(plain_case: Case) -> None:
    # ICH at 0 mL while IVH has pixels: the ICH segment has no frame (empty frames are left out),
    # so the ICH group is read on the middle frame of the SEG, and OHIF can still open the report.
    image = sitk.GetArrayFromImage(plain_case.labels.image)
    image[image == ICH] = 0
    no_ich = sitk.GetImageFromArray(image)
    no_ich.CopyInformation(plain_case.labels.image)
    case = dataclasses.replace(plain_case, labels=dataclasses.replace(plain_case.labels, image=no_ich))
    no_ich_measured = dataclasses.replace(plain_case.measurements, ich_volume_ml=0.0, abc2_volume_ml=0.0)
    seg, sr = _build(case, no_ich_measured)
    _assert_drawable(sr)
    (read,) = [g for g in _groups(sr) if _identifier(g) == "ICH v1" and _inferred(g)]
    ((_, scoord),) = _inferred(read)
    seg_sources = {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                   for f in seg.PerFrameFunctionalGroupsSequence}
    assert str(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID) in seg_sources
    assert [i.TextValue for i in read.ContentSequence if concept_name(i) == COMMENT] == ["No ICH detected"]
    assert not [g for g in _groups(sr) if _identifier(g) in ("ICH A v1", "ICH B v1")]
