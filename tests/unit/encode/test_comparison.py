"""Follow-up outputs: the comparison key image and the comparison in the TID 1500 SR.

The follow-up is ``plain_case`` (this folder's conftest); the baseline is the same slice with
the ICH shrunk by two pixels, so both outlines are known without running a registration (the
compare stage's plane is tested in tests/unit/compare).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage
from scipy import ndimage

from dicomnode.domain import (
    ICH,
    ComparedPrior,
    Comparison,
    PriorPlane,
    Registration,
    Risk,
    SegmentationRef,
)
from dicomnode.encode import build_seg, build_sr, codes, uids
from dicomnode.encode.comparison_image import (
    COLUMN_X,
    COMPARISON_SIZE,
    PANEL_PX,
    PRIOR_ICH_COLOUR,
    TEXT_PX,
    TEXT_TOP,
    build_comparison_image,
    comparison_lines,
    render_comparison,
)
from dicomnode.encode.preview import STYLE, SYNTHETIC_NOTE
from dicomnode.encode.seg import segment_numbers_by_label
from dicomnode.encode.sr_followup import add_comparison
from dicomnode.encode.text import draw_text
from tests.unit.encode.cases import Case, dciodvfy

RED = STYLE[ICH][1]
PRIOR_SERIES = "1.2.826.0.1.3680043.8.498.1"
COMPARISON = Comparison(
    prior_series_instance_uid=PRIOR_SERIES, prior_study_datetime="2024-01-01T08:00:00",
    interval_h=24.0, prior_ich_volume_ml=12.5, ich_volume_ml=20.0, ich_change_ml=7.5,
    ich_change_pct=60.0, prior_ivh_volume_ml=0.0, ivh_volume_ml=2.5, ivh_change_ml=2.5,
    prior_oedema_volume_ml=3.0, oedema_volume_ml=4.0, oedema_change_ml=1.0, new_ivh=True,
    expansion=True, definition="ICH growth > 6 mL or > 33 %",
    registration=Registration(metric_value=-0.5, correlation=0.97, trusted=True),
    prior_he_probability=0.31)
HE = Risk(probability=0.31, model="he-svm", model_version="1.0", synthetic_training=True)


def _key_slice(case: Case) -> int:
    lab = sitk.GetArrayViewFromImage(case.labels.image)
    return int(np.argmax((lab == ICH).sum(axis=(1, 2))))


def _compared(case: Case, *, registered: bool = True, he: Risk | None = HE,
              comparison: Comparison = COMPARISON) -> ComparedPrior:
    z = _key_slice(case)
    hu = sitk.GetArrayFromImage(case.volume.image)[z].astype(np.float32)
    lab = sitk.GetArrayFromImage(case.labels.image)[z]
    shrunk = ndimage.binary_erosion(lab == ICH, iterations=2)
    prior = np.where(lab == ICH, 0, lab).astype(np.uint8)
    prior[shrunk] = ICH
    sx, sy = case.volume.image.GetSpacing()[:2]
    plane = PriorPlane(z=z, hu=hu, labels=prior, spacing_mm=(sy, sx), registered=registered)
    return ComparedPrior(comparison, plane, he)


def _panels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rgb[:PANEL_PX, :PANEL_PX - 1], rgb[:PANEL_PX, PANEL_PX + 1:]


def _is(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (rgb == np.asarray(colour, np.uint8)).all(axis=2)


def test_both_outlines_and_the_baseline_ring(plain_case: Case) -> None:
    rgb = render_comparison(plain_case.volume, plain_case.labels, _compared(plain_case))
    assert rgb.shape == (*COMPARISON_SIZE, 3) and rgb.dtype == np.uint8
    left, right = _panels(rgb)
    base_red, follow_red = _is(left, RED), _is(right, RED)
    assert base_red.sum() > 20 and follow_red.sum() > 20
    # The follow-up's ICH is larger: its red ring encloses more pixels than the baseline's.
    assert ndimage.binary_fill_holes(follow_red).sum() > ndimage.binary_fill_holes(base_red).sum()
    magenta = _is(right, PRIOR_ICH_COLOUR)
    assert magenta.sum() > 20 and not _is(left, PRIOR_ICH_COLOUR).any()
    # The baseline ring lies inside the follow-up's outline (the baseline is the shrunk ICH).
    assert (magenta & ndimage.binary_fill_holes(follow_red)).sum() >= 0.9 * magenta.sum()
    unregistered = render_comparison(plain_case.volume, plain_case.labels,
                                     _compared(plain_case, registered=False))
    assert not _is(_panels(unregistered)[1], PRIOR_ICH_COLOUR).any()  # planes not aligned


def test_text_lines_and_their_pixels(plain_case: Case) -> None:
    compared = _compared(plain_case)
    left, right = comparison_lines(compared, plain_case.labels)
    text = "\n".join(t for t, _ in left + right)
    for expected in ("12.5", "20.0", "+7.5", "+60.0 %", "24.0 h", "New IVH    yes",
                     "Haematoma expansion: YES", "ICH growth > 6 mL or > 33 %",
                     "HE risk at baseline: 31% (he-svm 1.0) [synthetic]",
                     "Registration trusted", "NOT FOR DIAGNOSTIC USE", SYNTHETIC_NOTE):
        assert expected in text, expected
    rgb = render_comparison(plain_case.volume, plain_case.labels, compared)
    # Each column's first line, drawn alone at the same place, gives the same pixels.
    for x, lines in zip(COLUMN_X, (left, right), strict=True):
        line, colour = lines[0]
        alone = Image.fromarray(np.zeros_like(rgb))
        face = "mono" if colour != (255, 170, 0) else "mono-bold"
        draw_text(ImageDraw.Draw(alone), (x, TEXT_TOP), line, colour, face=face, size_px=TEXT_PX)
        drawn = np.asarray(alone)
        mask = drawn.max(axis=2) > 0
        assert mask.sum() > 100 and (rgb[mask] == drawn[mask]).all()
    # Changes of the numbers and of the notices reach the pixels.
    smaller = dataclasses.replace(COMPARISON, ich_change_ml=1.5, expansion=False)
    other = render_comparison(plain_case.volume, plain_case.labels,
                              _compared(plain_case, comparison=smaller))
    assert (other[TEXT_TOP:] != rgb[TEXT_TOP:]).any() and (other[:PANEL_PX] == rgb[:PANEL_PX]).all()
    real = dataclasses.replace(plain_case.labels, synthetic_training=False)
    left2, right2 = comparison_lines(_compared(plain_case, he=None), real)
    assert SYNTHETIC_NOTE not in [t for t, _ in left2 + right2]
    assert "HE risk at baseline: 31%" in [t for t, _ in right2]


def test_comparison_image_dataset(plain_case: Case, save) -> None:  # type: ignore[no-untyped-def]
    compared = _compared(plain_case)
    ds = build_comparison_image(plain_case.datasets, plain_case.volume, plain_case.labels,
                                compared, version=2)
    path = save(ds, "comparison.dcm")
    errors, _ = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    back = pydicom.dcmread(path)
    src = plain_case.datasets[0]
    assert back.SOPClassUID == SecondaryCaptureImageStorage and back.Modality == "OT"
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.SeriesInstanceUID == uids.series_uid(plain_case.volume.series_instance_uid, 2,
                                                     "comparison")
    assert back.SeriesInstanceUID not in {uids.series_uid(plain_case.volume.series_instance_uid, 2, k)
                                          for k in ("overlay", "overlay-summary")}
    assert "synthetic" in back.SeriesDescription and "NOT FOR DIAGNOSTIC USE" in back.SeriesDescription
    assert PRIOR_SERIES in back.ImageComments and "+7.5" in back.ImageComments
    key = plain_case.volume.slices[compared.plane.z]  # type: ignore[union-attr]
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == key.sop_instance_uid
    assert (back.pixel_array == render_comparison(
        plain_case.volume, plain_case.labels, compared, footer=["Result version 2"])).all()
    with pytest.raises(ValueError, match="prior"):
        build_comparison_image(plain_case.datasets, plain_case.volume, plain_case.labels,
                               ComparedPrior(COMPARISON), version=1)


# ------------------------------------------------------------------------------------------ SR


def _items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _time_point(group: Dataset) -> str:
    return next(i.TextValue for i in group.ContentSequence
                if codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("C2348792", "UMLS"))


def _timed_groups(sr: Dataset) -> dict[str, list[Dataset]]:
    measurements = next(i for i in sr.ContentSequence
                        if codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("126010", "DCM"))
    out: dict[str, list[Dataset]] = {}
    for group in measurements.ContentSequence:
        if any(codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("C2348792", "UMLS")
               for i in group.ContentSequence):
            out.setdefault(_time_point(group).split()[0], []).append(group)
    return out


def _prior_ref(case: Case) -> SegmentationRef:
    seg = build_seg(case.datasets, case.volume, case.labels, version=1, software_version="0")
    numbers = segment_numbers_by_label(seg)
    tracking = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    return SegmentationRef(
        sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
        series_instance_uid=str(seg.SeriesInstanceUID), study_instance_uid=str(seg.StudyInstanceUID),
        source_series_instance_uid=case.volume.series_instance_uid,
        segments={v: (numbers[n], tracking[numbers[n]]) for v, n in ((1, "ICH"), (2, "IVH"))
                  if n in numbers})


def _followup_sr(case: Case, compared: ComparedPrior) -> tuple[Dataset, Dataset]:
    seg = build_seg(case.datasets, case.volume, case.labels, version=1, software_version="0")
    sr = build_sr(case.datasets, seg, case.measurements, case.labels, version=1,
                  software_version="0")
    add_comparison(sr, compared, seg, version=1)
    return sr, seg


def test_sr_groups_for_both_time_points(plain_case: Case, tilted_case: Case, save) -> None:  # type: ignore[no-untyped-def]
    prior = _prior_ref(tilted_case)  # another study: the baseline's SEG
    compared = dataclasses.replace(_compared(plain_case), segmentation=prior)
    sr, seg = _followup_sr(plain_case, compared)
    path = save(sr, "sr.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors)
    assert all("99DCMNODE" in w for w in warnings), "\n".join(warnings)
    sr = pydicom.dcmread(path)
    groups = _timed_groups(sr)
    assert [len(groups["baseline"]), len(groups["follow-up"])] == [1, 1]  # no IVH at baseline
    (base,), (follow,) = groups["baseline"], groups["follow-up"]
    image = next(i for i in base.ContentSequence if i.ValueType == "IMAGE")
    ref = image.ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == prior.sop_instance_uid
    assert int(ref.ReferencedSegmentNumber) == prior.segments[ICH][0]
    uid = next(i.UID for i in base.ContentSequence if i.ValueType == "UIDREF"
               and codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("112040", "DCM"))
    assert uid == prior.segments[ICH][1]  # the baseline SEG's own Tracking UID
    types = [codes.as_tuple(i.ConceptCodeSequence[0]) for i in base.ContentSequence
             if codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("126072", "DCM")]
    assert types == [codes.as_tuple(codes.TIME_POINT_BASELINE)]
    nums = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
            for i in _items(base) if i.ValueType == "NUM"}
    assert nums[codes.VOLUME.value] == 12.5 and nums[codes.HE_RISK.value] == 31.0
    nums = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
            for i in _items(follow) if i.ValueType == "NUM"}
    assert (nums["ICH_CHANGE"], nums["ICH_CHANGE_PCT"], nums["IVH_CHANGE"], nums["INTERVAL"]) == (
        7.5, 60.0, 2.5, 24.0)
    coded = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeMeaning
             for i in _items(follow) if i.ValueType == "CODE"}
    assert (coded["HE_OBSERVED"], coded["NEW_IVH"], coded["REG_TRUSTED"]) == ("Yes", "Yes", "Yes")
    image = next(i for i in follow.ContentSequence if i.ValueType == "IMAGE")
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    containers = [i for i in sr.ContentSequence
                  if codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("C0034375", "UMLS")]
    assert len(containers) == 1  # TID 1500 row 12 is 0-1: the scan's finding and the comparison's
    qualitative = containers[0]
    found = {i.ConceptNameCodeSequence[0].CodeValue: i for i in qualitative.ContentSequence}
    assert found["HE_OBSERVED"].ConceptCodeSequence[0].CodeValue == codes.YES.value
    assert found["PRIOR_SERIES"].TextValue == PRIOR_SERIES
    other = sr.PertinentOtherEvidenceSequence
    assert [(s.StudyInstanceUID, s.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
             .ReferencedSOPInstanceUID) for s in other] == [(prior.study_instance_uid,
                                                             prior.sop_instance_uid)]


def test_sr_without_the_baseline_seg(plain_case: Case, save) -> None:  # type: ignore[no-untyped-def]
    untrusted = dataclasses.replace(COMPARISON, expansion=False, registration=Registration(
        metric_value=None, correlation=0.4, trusted=False, message="registration failed: x"))
    sr, _ = _followup_sr(plain_case, _compared(plain_case, he=None, comparison=untrusted))
    errors, _ = dciodvfy(save(sr, "sr.dcm"))
    assert errors == [], "\n".join(errors)
    (base,) = _timed_groups(sr)["baseline"]
    assert not any(i.ValueType == "IMAGE" for i in base.ContentSequence)  # TID 1501, no SEG
    nums = [float(i.MeasuredValueSequence[0].NumericValue) for i in _items(base)
            if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == codes.VOLUME.value]
    assert nums == [12.5, 0.0]
    containers = [i for i in sr.ContentSequence
                  if codes.as_tuple(i.ConceptNameCodeSequence[0]) == ("C0034375", "UMLS")]
    assert len(containers) == 1  # TID 1500 row 12 is 0-1: the scan's finding and the comparison's
    qualitative = containers[0]
    found = {i.ConceptNameCodeSequence[0].CodeValue: i for i in qualitative.ContentSequence}
    assert found["HE_OBSERVED"].ConceptCodeSequence[0].CodeMeaning == "No"
    assert found["REG_NOTE"].TextValue == "registration failed: x"
    assert "PertinentOtherEvidenceSequence" not in sr


def test_comparison_image_of_a_resampled_series(tilted_case: Case, save) -> None:  # type: ignore[no-untyped-def]
    """A tilted follow-up (resampled volume): the nearest source plane is referenced."""
    compared = _compared(tilted_case)
    ds = build_comparison_image(tilted_case.datasets, tilted_case.volume, tilted_case.labels,
                                compared, version=1)
    errors, _ = dciodvfy(save(ds, "comparison.dcm"))
    assert errors == [], "\n".join(errors)
    assert tilted_case.volume.resampled
    image = tilted_case.volume.image
    z = compared.plane.z  # type: ignore[union-attr]
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        (image.GetSize()[0] / 2, image.GetSize()[1] / 2, float(z))))
    normal = np.cross(*np.reshape(tilted_case.volume.orientation, (2, 3)))
    offsets = {s.sop_instance_uid: abs(float(np.dot(np.asarray(s.position_mm) - centre, normal)))
               for s in tilted_case.volume.slices}
    chosen = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert offsets[chosen] == min(offsets.values())
    assert offsets[chosen] <= max(tilted_case.volume.spacing_mm)
