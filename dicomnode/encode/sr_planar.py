"""Planar measurement groups of the SR: what a viewer draws on the key slices (TID 1410, TID 1501).

Inputs: the SEG of the result (its frames are the findings on the source images). Outputs:
highdicom measurement groups for :func:`dicomnode.encode.sr.build_sr`. Side effects: none.

Viewers such as OHIF draw only measurements with image coordinates (SCOORD), so beside each
volumetric group (TID 1411, referencing the SEG segment) the report carries:

- per finding, a Planar ROI group (TID 1410) with the finding's outline on the SEG frame where
  the finding is largest: a closed POLYLINE (Image Region) along the pixel edges of the largest
  connected part of the mask (holes filled), referencing the source image, with its Area
  (except for oedema, a ring around the haematoma, whose outline encloses the haematoma too).
  It carries the finding's Tracking UID, so readers know both groups describe one finding;
- for ICH, ABC/2's A and B as lines on that image: Measurement groups (TID 1501) each holding
  one length whose INFERRED FROM item is a 2-point POLYLINE (TID 300/320), each tracked on its
  own. A and B are computed as in ABC/2 (:func:`dicomnode.geometry.planar.feret`), on the
  source image, so on an unresampled series they equal the A and B of the ABC/2 volume;
- per finding without any pixel in the SEG (ICH at 0 mL: a normal scan), a Measurement group
  (TID 1501) with the finding's Tracking UID on the middle frame of its segment (of the SEG when
  the segment has no frame): Area 0 mm2 INFERRED FROM the border of that whole image (the plane
  that was read), Presence of property Absent (when its volume is 0) and a Comment "No <label>
  detected". OHIF 3.13 cannot open a report in which any Tracking UID lacks image coordinates
  (docs/viewer.md), and shows a Comment as the first line of the label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CoordinatesForMeasurement,
    FindingSite,
    ImageRegion,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset

from dicomnode.domain import ICH, OEDEMA
from dicomnode.geometry.planar import feret, outline, to_scoord

from . import codes

__all__ = ["KeyFrame", "key_frames", "middle_frame", "planar_groups"]


@dataclass(frozen=True)
class KeyFrame:
    """The SEG frame where one segment has the most pixels, with the source image it lies on."""

    segment_number: int
    mask: np.ndarray  # bool (rows, columns)
    pixel_spacing_mm: tuple[float, float]  # (row, column)
    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None  # of a multi-frame source image

    def source_image(self) -> SourceImageForRegion:
        frames = [self.frame_number] if self.frame_number is not None else None
        return SourceImageForRegion(self.sop_class_uid, self.sop_instance_uid, frames)


def _spacing(frame: Dataset, shared: Dataset | None) -> tuple[float, float]:
    for group in (frame, shared):
        if group is not None and "PixelMeasuresSequence" in group:
            row, col = group.PixelMeasuresSequence[0].PixelSpacing
            return float(row), float(col)
    raise ValueError("SEG has no Pixel Measures (pixel spacing)")


def _frame_segments(seg: Dataset) -> list[int]:
    """The segment number of each SEG frame."""
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    shared_id = shared.get("SegmentIdentificationSequence") if shared is not None else None
    out = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ident = frame.get("SegmentIdentificationSequence") or shared_id
        if not ident:
            raise ValueError("SEG frame without Segment Identification (PS3.3 C.8.20.3)")
        out.append(int(ident[0].ReferencedSegmentNumber))
    return out


def _key_frame(seg: Dataset, k: int, number: int, mask: np.ndarray) -> KeyFrame:
    frame = seg.PerFrameFunctionalGroupsSequence[k]
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    src = frame.DerivationImageSequence[0].SourceImageSequence[0]
    return KeyFrame(
        segment_number=number, mask=mask, pixel_spacing_mm=_spacing(frame, shared),
        sop_class_uid=str(src.ReferencedSOPClassUID), sop_instance_uid=str(src.ReferencedSOPInstanceUID),
        frame_number=int(src.ReferencedFrameNumber) if "ReferencedFrameNumber" in src else None)


def key_frames(seg: Dataset) -> dict[int, KeyFrame]:
    """Segment number -> its largest frame (the first one on a tie); empty segments are absent."""
    pixels = np.asarray(seg.pixel_array, dtype=bool)
    if pixels.ndim == 2:
        pixels = pixels[None]
    best: dict[int, tuple[int, int]] = {}  # number -> (pixel count, frame index)
    counts = pixels.sum(axis=(1, 2))
    for k, number in enumerate(_frame_segments(seg)):
        if counts[k] > best.get(number, (0, -1))[0]:
            best[number] = (int(counts[k]), k)
    return {number: _key_frame(seg, k, number, pixels[k]) for number, (_, k) in best.items()}


def middle_frame(seg: Dataset, number: int) -> KeyFrame:
    """The middle frame of segment ``number`` (of all frames when it has none), with an empty
    mask: the image on which a finding without pixels is reported as read.

    The SEG's frames follow the source planes (``build_seg``), so the middle frame lies on the
    middle of the series, the plane a reader expects for a scan without findings.
    """
    segments = _frame_segments(seg)
    own = [k for k, n in enumerate(segments) if n == number] or list(range(len(segments)))
    k = own[len(own) // 2]
    return _key_frame(seg, k, number, np.zeros((int(seg.Rows), int(seg.Columns)), dtype=bool))


def _image_border(key: KeyFrame) -> CoordinatesForMeasurement:
    """The border of the whole key image, a closed POLYLINE (SCOORD pixel-edge coordinates)."""
    rows, cols = key.mask.shape
    border = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows], [0, 0]], dtype=np.float32)
    return CoordinatesForMeasurement(graphic_type="POLYLINE", graphic_data=border,
                                     source_image=key.source_image())


def _not_outlined(key: KeyFrame, label: str, volume_ml: float, tracking: TrackingIdentifier,
                  common: Mapping[str, Any]) -> MeasurementsAndQualitativeEvaluations:
    """The group of a finding without any pixel in the SEG: read on ``key``'s image, area 0."""
    absent = volume_ml <= 0.0
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        measurements=[Measurement(name=codes.AREA, value=0.0, unit=codes.UNIT_MM2,
                                  referenced_coordinates=[_image_border(key)])],
        qualitative_evaluations=[QualitativeEvaluation(codes.PRESENCE, codes.ABSENT)] if absent else None,
        **common)
    # A finding above 0 mL with no pixel on the source planes was lost when resampled to them.
    text = f"No {label} detected" if absent else f"{label} {volume_ml:.2f} ml: no pixel on the source images"
    group[0].ContentSequence.append(TextContentItem(name=codes.COMMENT, value=text,
                                                    relationship_type="CONTAINS"))
    return group


Group: TypeAlias = PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations


def _outline(key: KeyFrame, value: int, tracking: TrackingIdentifier,
             common: Mapping[str, Any]) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """The finding's outline on its key frame (TID 1410), with its Area except for oedema."""
    row_mm, col_mm = key.pixel_spacing_mm
    shape = outline(key.mask)
    measurements = None
    if value != OEDEMA:
        measurements = [Measurement(name=codes.AREA, value=round(shape.n_pixels * row_mm * col_mm, 2),
                                    unit=codes.UNIT_MM2)]
    region = ImageRegion(graphic_type="POLYLINE",
                         graphic_data=to_scoord(shape.vertices).astype(np.float32),
                         source_image=key.source_image(),
                         pixel_origin_interpretation="FRAME" if key.frame_number else None)
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, measurements=measurements, **common)


def _abc2_lines(key: KeyFrame, value: int, tracking: Callable[[int, str], TrackingIdentifier],
                common: Mapping[str, Any]) -> list[MeasurementsAndQualitativeEvaluations]:
    """ABC/2's A and B on the key frame, each a length INFERRED FROM a 2-point POLYLINE."""
    row_mm, col_mm = key.pixel_spacing_mm
    f = feret(key.mask, row_mm, col_mm)
    lines = []
    for part, name, length, ends in (("abc2-a", codes.ABC2_A, f.a_mm, f.a_ends),
                                      ("abc2-b", codes.ABC2_B, f.b_mm, f.b_ends)):
        coords = CoordinatesForMeasurement(
            graphic_type="POLYLINE", graphic_data=to_scoord(ends).astype(np.float32),
            source_image=key.source_image())
        lines.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(value, part),
            measurements=[Measurement(name=name, value=round(length, 2), unit=codes.UNIT_MM,
                                      referenced_coordinates=[coords])],
            **common))
    return lines


def planar_groups(
    seg: Dataset,
    numbers: Mapping[int, int],
    tracking: Callable[[int, str], TrackingIdentifier],
    algorithm: AlgorithmIdentification,
    volumes_ml: Mapping[int, float],
) -> list[Group]:
    """The outline group of each finding in ``numbers`` (label value -> segment number), then
    ICH's A and B line groups.

    ``tracking(label_value, part)`` gives the tracking identifier: ``part`` empty for the
    finding itself (the same as its volumetric group), ``"abc2-a"`` / ``"abc2-b"`` for the lines.
    A finding without any pixel in the SEG gets, instead of an outline, the group of
    :func:`_not_outlined` on :func:`middle_frame` (``volumes_ml`` says whether it is absent), so
    that every Tracking UID of the report has image coordinates.
    """
    frames = key_frames(seg)
    out: list[Group] = []
    lines: list[MeasurementsAndQualitativeEvaluations] = []
    for value, number in numbers.items():
        concept = codes.segment_concept(value)
        common: dict[str, Any] = {"finding_type": concept.property_type, "finding_category": concept.category,
                                  "finding_sites": [FindingSite(concept.anatomic_region)],
                                  "algorithm_id": algorithm}
        key = frames.get(number)
        if key is None:
            out.append(_not_outlined(middle_frame(seg, number), concept.label,
                                     float(volumes_ml.get(value, 0.0)), tracking(value, ""), common))
            continue
        out.append(_outline(key, value, tracking(value, ""), common))
        if value == ICH:
            lines += _abc2_lines(key, value, tracking, common)
    return out + lines
