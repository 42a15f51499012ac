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
  source image, so on an unresampled series they equal the A and B of the ABC/2 volume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CoordinatesForMeasurement,
    FindingSite,
    ImageRegion,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset

from dicomnode.domain import ICH, OEDEMA
from dicomnode.geometry.planar import feret, outline, to_scoord

from . import codes

__all__ = ["KeyFrame", "key_frames", "planar_groups"]


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


def key_frames(seg: Dataset) -> dict[int, KeyFrame]:
    """Segment number -> its largest frame (the first one on a tie); empty segments are absent."""
    pixels = np.asarray(seg.pixel_array, dtype=bool)
    if pixels.ndim == 2:
        pixels = pixels[None]
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    shared_id = shared.get("SegmentIdentificationSequence") if shared is not None else None
    best: dict[int, tuple[int, int]] = {}  # number -> (pixel count, frame index)
    counts = pixels.sum(axis=(1, 2))
    groups = seg.PerFrameFunctionalGroupsSequence
    for k, frame in enumerate(groups):
        ident = frame.get("SegmentIdentificationSequence") or shared_id
        if not ident:
            raise ValueError("SEG frame without Segment Identification (PS3.3 C.8.20.3)")
        number = int(ident[0].ReferencedSegmentNumber)
        if counts[k] > best.get(number, (0, -1))[0]:
            best[number] = (int(counts[k]), k)
    out = {}
    for number, (_, k) in best.items():
        frame = groups[k]
        src = frame.DerivationImageSequence[0].SourceImageSequence[0]
        out[number] = KeyFrame(
            segment_number=number, mask=pixels[k], pixel_spacing_mm=_spacing(frame, shared),
            sop_class_uid=str(src.ReferencedSOPClassUID),
            sop_instance_uid=str(src.ReferencedSOPInstanceUID),
            frame_number=int(src.ReferencedFrameNumber) if "ReferencedFrameNumber" in src else None)
    return out


def planar_groups(
    seg: Dataset,
    numbers: Mapping[int, int],
    tracking: Callable[[int, str], TrackingIdentifier],
    algorithm: AlgorithmIdentification,
) -> list[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations]:
    """The outline group of each finding in ``numbers`` (label value -> segment number), then
    ICH's A and B line groups.

    ``tracking(label_value, part)`` gives the tracking identifier: ``part`` empty for the
    finding itself (the same as its volumetric group), ``"abc2-a"`` / ``"abc2-b"`` for the lines.
    Findings without any pixel in the SEG get no group.
    """
    frames = key_frames(seg)
    out: list[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations] = []
    lines: list[MeasurementsAndQualitativeEvaluations] = []
    for value, number in numbers.items():
        key = frames.get(number)
        if key is None:
            continue
        concept = codes.segment_concept(value)
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
        common: dict[str, Any] = {"finding_type": concept.property_type, "finding_category": concept.category,
                  "finding_sites": [FindingSite(concept.anatomic_region)], "algorithm_id": algorithm}
        out.append(PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(value, ""), referenced_region=region,
            measurements=measurements, **common))
        if value == ICH:
            f = feret(key.mask, row_mm, col_mm)
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
    return out + lines
