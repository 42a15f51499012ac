"""Label map -> DICOM Segmentation (BINARY) on the source images' grid, and back.

Inputs: the source CT instances (headers suffice), their :class:`~dicomnode.domain.CTVolume` and
a :class:`~dicomnode.domain.LabelMap` on the volume's grid. Outputs: a
:class:`highdicom.seg.Segmentation` (PS3.3 A.51, C.8.20). Side effects: none.

One segment per label value the backend provides (``LabelMap.labels``, ascending value ->
segment numbers 1, 2, ...), even when its mask is empty. Frames follow the source planes: a
resampled volume's labels go back to each source plane (nearest neighbour,
:func:`dicomnode.geometry.source_grid.to_source_grid`); every frame's Derivation Image Sequence points at its
source image (highdicom). Frames without any pixel of a segment are left out
(``omit_empty_frames``); readers treat an absent frame as empty. Codes and colours are in
:mod:`dicomnode.encode.codes`, UIDs in :mod:`dicomnode.encode.uids`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicomnode.domain import LABELS, CTVolume, LabelMap
from dicomnode.geometry.source_grid import to_source_grid

from . import codes, uids

__all__ = [
    "build_seg",
    "content_description",
    "read_seg_mask",
    "segment_numbers_by_label",
    "series_description",
    "source_order",
    "specific_character_set",
]

log = logging.getLogger(__name__)

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
SYNTHETIC_STATEMENT = "fit on synthetic data"


def series_description(kind: str, labels: LabelMap) -> str:
    """Series Description (LO, 64 characters at most) of a result series.

    ``kind`` is "SEG" or "SR". Names the content and, for a model fit on synthetic data only,
    says so and that it is not for diagnostic use.
    """
    if labels.synthetic_training:
        text = f"ICH {kind} {SYNTHETIC_STATEMENT} - {NOT_FOR_DIAGNOSTIC_USE}"
    else:
        text = f"ICH {kind} dicomnode {labels.model} {labels.model_version}"
    return text[:64]


def content_description(labels: LabelMap) -> str:
    """Content Description (LO, 64 characters at most): the model, and the synthetic caveat."""
    if labels.synthetic_training:
        text = f"Model {SYNTHETIC_STATEMENT} only - {NOT_FOR_DIAGNOSTIC_USE}"
    else:
        text = f"ICH segmentation by {labels.model} {labels.model_version} ({labels.backend})"
    return text[:64]


def algorithm_parameters(labels: LabelMap) -> dict[str, str]:
    """Algorithm Parameters of the segmentation algorithm (backend, training data, intended use)."""
    params = {"backend": labels.backend}
    if labels.synthetic_training:
        params["training_data"] = f"{SYNTHETIC_STATEMENT} only"
        params["intended_use"] = NOT_FOR_DIAGNOSTIC_USE
    return params


def source_order(source_datasets: Sequence[Dataset], volume: CTVolume) -> list[Dataset]:
    """The source datasets in the order of ``volume.slices`` (single-frame sources).

    Raises ``ValueError`` when a plane of the volume has no dataset; datasets of other instances
    (e.g. duplicates the loader dropped) are ignored.
    """
    by_uid: dict[str, Dataset] = {}
    for ds in source_datasets:
        by_uid.setdefault(str(ds.SOPInstanceUID), ds)
    missing = [s.sop_instance_uid for s in volume.slices if s.sop_instance_uid not in by_uid]
    if missing:
        raise ValueError(
            f"{len(missing)} source plane(s) of the volume have no dataset, e.g. {missing[0]}"
        )
    return [by_uid[s.sop_instance_uid] for s in volume.slices]


def _label_planes(volume: CTVolume, labels: LabelMap) -> np.ndarray:
    """Label values on the source planes, (n_slices, rows, columns) uint8, in slice order."""
    return to_source_grid(labels.image, volume)


def _segment_numbers(labels: LabelMap) -> dict[int, int]:
    """Label value -> segment number (1, 2, ... in ascending label value)."""
    values = sorted(int(v) for v in labels.labels)
    for v in values:
        codes.segment_concept(v)  # raises for values without a concept
    if not values:
        raise ValueError("the label map provides no labels")
    return {v: i + 1 for i, v in enumerate(values)}


def build_seg(
    source_datasets: Sequence[Dataset],
    volume: CTVolume,
    labels: LabelMap,
    *,
    version: int,
    series_number: int = 9901,
    manufacturer: str = "dicomnode",
    software_version: str,
    device_serial_number: str = "1",
    omit_empty_frames: bool = True,
) -> hd.seg.Segmentation:
    """Encode ``labels`` as a BINARY DICOM Segmentation of the source series.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        The instances of the source series (pixel data not needed), any order.
    volume : CTVolume
        The loaded series; ``slices`` give the source planes and their order.
    labels : LabelMap
        Canonical label values on ``volume.image``'s grid.
    version : int
        Result version (>= 1); with the source series UID it fixes every UID.
    series_number, manufacturer, software_version, device_serial_number
        Series and Enhanced General Equipment attributes.
    omit_empty_frames : bool
        Leave out frames without any pixel of their segment (default).

    Returns
    -------
    highdicom.seg.Segmentation

    Raises
    ------
    ValueError
        Source datasets missing or from another series, label values without a concept, a
        label value in the map that the backend did not declare, or a label grid that does not
        match the source planes.
    """
    if not source_datasets:
        raise ValueError("no source datasets")
    other = {str(ds.SeriesInstanceUID) for ds in source_datasets} - {volume.series_instance_uid}
    if other:
        raise ValueError(f"source datasets of another series: {sorted(other)}")
    numbers = _segment_numbers(labels)
    planes = _segment_planes(volume, labels, numbers)
    source_images, pixel_array = _source_frames(source_datasets, volume, planes)
    series_uid = volume.series_instance_uid
    descriptions = _segment_descriptions(numbers, labels, manufacturer, series_uid, version)
    equipment = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=f"{labels.model} ({labels.backend})"[:64],
        software_versions=software_version,
        contribution_description=f"segmentation model {labels.model} {labels.model_version}"[:64],
    )
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.series_uid(series_uid, version, "seg"),
        series_number=series_number,
        sop_instance_uid=uids.instance_uid(series_uid, version, "seg", 0),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name="dicomnode",
        software_versions=software_version,
        device_serial_number=device_serial_number,
        content_description=content_description(labels),
        content_label="ICH_SEG",
        omit_empty_frames=omit_empty_frames,
        contributing_equipment=[equipment],
        series_description=series_description("SEG", labels),
        specific_character_set=specific_character_set(source_images[0]),
    )
    log.info("SEG %s: %d segment(s), %d frame(s)", seg.SOPInstanceUID, len(descriptions),
             int(seg.NumberOfFrames), extra={"series_uid": series_uid})
    return seg


def _segment_planes(volume: CTVolume, labels: LabelMap, numbers: Mapping[int, int]) -> np.ndarray:
    """Segment numbers on the source planes (n_slices, rows, columns), in slice order.

    Raises ValueError for a label value in the map that ``labels.labels`` does not declare.
    """
    planes = _label_planes(volume, labels)
    lut = np.zeros(256, dtype=np.uint8)
    for value, number in numbers.items():
        lut[value] = number
    undeclared = sorted(set(np.unique(planes).tolist()) - set(numbers) - {0})
    if undeclared:
        raise ValueError(f"label values {undeclared} are in the label map but not in LabelMap.labels "
                         f"{sorted(numbers)}")
    return lut[planes]


def _source_frames(source_datasets: Sequence[Dataset], volume: CTVolume,
                   pixel_array: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    """The source images and the segment planes in their frame order.

    Single-frame sources: one image per plane (:func:`source_order`). One multi-frame source:
    that image, with the planes placed at their frame numbers (frames without a plane empty).
    """
    multi = [s for s in volume.slices if s.frame_number is not None]
    if not multi:
        return source_order(source_datasets, volume), pixel_array
    if len(multi) != len(volume.slices) or len({s.sop_instance_uid for s in multi}) != 1:
        raise ValueError("mixed single-frame and multi-frame source planes are not supported")
    source = next(ds for ds in source_datasets if ds.SOPInstanceUID == multi[0].sop_instance_uid)
    frames = np.zeros((int(source.NumberOfFrames), volume.rows, volume.columns), dtype=np.uint8)
    for i, s in enumerate(volume.slices):
        frames[int(s.frame_number) - 1] = pixel_array[i]  # type: ignore[arg-type]
    return [source], frames


def _segment_descriptions(numbers: Mapping[int, int], labels: LabelMap, manufacturer: str,
                          series_uid: str, version: int) -> list[hd.seg.SegmentDescription]:
    """One description per segment: its codes, colour, algorithm and Tracking UID."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=labels.model,
        family=codes.ALGORITHM_FAMILY,
        version=labels.model_version,
        source=manufacturer,
        parameters=algorithm_parameters(labels),
    )
    descriptions = []
    for value, number in numbers.items():
        concept = codes.segment_concept(value)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=concept.label,
                segmented_property_category=concept.category,
                segmented_property_type=concept.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=uids.tracking_uid(series_uid, version, value),
                tracking_id=f"{concept.label} v{version}"[:64],
                anatomic_regions=[concept.anatomic_region],
                display_color=concept.cielab,
            )
        )
    return descriptions


def specific_character_set(ds: Dataset) -> str | list[str] | None:
    """``ds``'s Specific Character Set as highdicom takes it (a list when multi-valued)."""
    charset = ds.get("SpecificCharacterSet")
    return list(charset) if charset is not None and not isinstance(charset, str) else charset


def _label_name(segment: Dataset) -> str:
    """Canonical label name of a segment dicomnode wrote (by codes), else its Segment Label."""
    prop = codes.as_tuple(segment.SegmentedPropertyTypeCodeSequence[0])
    regions = [codes.as_tuple(r) for r in segment.get("AnatomicRegionSequence", [])]
    for value, concept in codes.SEGMENTS.items():
        region = codes.as_tuple(concept.anatomic_region)
        if prop == codes.as_tuple(concept.property_type) and region in regions:
            return LABELS[value]
    return str(segment.SegmentLabel)


def read_seg_mask(
    seg: Dataset, source_sop_instance_uids: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Masks of a SEG of single-frame source images, one per segment, on the source planes.

    Parameters
    ----------
    seg : pydicom.Dataset
        A Segmentation instance (e.g. read with ``pydicom.dcmread``).
    source_sop_instance_uids : sequence of str, optional
        Source images, in the order of the returned planes. Default: the order of the SEG's
        Referenced Series Sequence (for SEGs from :func:`build_seg`, the order of
        ``CTVolume.slices``).

    Returns
    -------
    dict
        Canonical label name ("ICH", "IVH", "oedema", "extra-axial"; the Segment Label for
        segments of other origin) -> bool array (n_slices, rows, columns).
    """
    segmentation = seg if isinstance(seg, hd.seg.Segmentation) else hd.seg.Segmentation.from_dataset(seg)
    if source_sop_instance_uids is None:
        source_sop_instance_uids = [
            str(item.ReferencedSOPInstanceUID)
            for series in segmentation.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        ]
    out: dict[str, np.ndarray] = {}
    for segment in segmentation.SegmentSequence:
        number = int(segment.SegmentNumber)
        pixels = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids,
            segment_numbers=[number],
            assert_missing_frames_are_empty=True,
        )
        name = _label_name(segment)
        if name in out:
            raise ValueError(f"two segments map to the label {name!r}")
        out[name] = pixels[..., 0].astype(bool)
    return out


def segment_numbers_by_label(seg: Dataset) -> Mapping[str, int]:
    """Canonical label name -> Segment Number of a SEG written by :func:`build_seg`."""
    return {_label_name(s): int(s.SegmentNumber) for s in seg.SegmentSequence}
