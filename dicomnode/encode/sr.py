"""Measurements and predictions -> TID 1500 Measurement Report (Comprehensive 3D SR).

Inputs: the source CT instances, the SEG built from them (:func:`dicomnode.encode.seg.build_seg`),
:class:`~dicomnode.domain.Measurements`, the :class:`~dicomnode.domain.LabelMap` (model name,
version, training data) and, optionally, predictions. Outputs: a
:class:`highdicom.sr.Comprehensive3DSR` (PS3.3 A.35.13; PS3.16 TID 1500). Side effects: none.

One Volumetric ROI Measurements group (TID 1411) per finding, each referencing its SEG segment
(and the source images it was derived from) and carrying the segment's Tracking UID: ICH always
(when the SEG has an ICH segment); IVH, perihaematomal oedema and extra-axial haemorrhage when
their volume is above zero. Then, for viewers that draw only measurements with image coordinates,
each finding's outline on its key slice (TID 1410, the same Tracking UID) and ICH's ABC/2 A and B
lines (:mod:`dicomnode.encode.sr_planar`); a finding without any pixel (ICH at 0 mL on a normal
scan) is instead reported as read on the middle image, with area 0. The report's Qualitative
Evaluations say "Intracranial hemorrhage" Present or Absent. The ICH group holds ABC/2, site,
cortical involvement, the density and shape markers (mapping in
:data:`dicomnode.encode.codes.MARKERS`) and the predictions. The observer is a device
(dicomnode, with the model name and version); the procedure reported is CT of head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    ReferencedSegment,
    SourceImageForSegmentation,
    SourceSeriesForSegmentation,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import generate_uid

from dicomnode.domain import (
    EXTRA_AXIAL,
    ICH,
    IVH,
    LABELS,
    OEDEMA,
    LabelMap,
    Measurements,
    Prediction,
    finite_or_none,
)

from . import codes, uids
from .seg import SYNTHETIC_STATEMENT, segment_numbers_by_label, series_description, specific_character_set
from .sr_planar import planar_groups

__all__ = ["build_sr"]

log = logging.getLogger(__name__)

def _device_uid(manufacturer: str) -> str:
    return generate_uid(prefix=uids.UID_PREFIX, entropy_srcs=[uids.NAMESPACE, "device", manufacturer])


def _segment_sources(seg: Dataset) -> dict[int, list[tuple[str, str]]]:
    """Segment number -> (SOP Class UID, SOP Instance UID) of the source images of its frames."""
    out: dict[int, list[tuple[str, str]]] = {}
    # With one segment, the segment identification may sit in the shared functional groups.
    shared = seg.get("SharedFunctionalGroupsSequence")
    shared_id = shared[0].get("SegmentIdentificationSequence") if shared else None
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ident = frame.get("SegmentIdentificationSequence") or shared_id
        if not ident:
            raise ValueError("SEG frame without Segment Identification (PS3.3 C.8.20.3)")
        number = int(ident[0].ReferencedSegmentNumber)
        refs = out.setdefault(number, [])
        for derivation in frame.get("DerivationImageSequence", []):
            for src in derivation.SourceImageSequence:
                key = (str(src.ReferencedSOPClassUID), str(src.ReferencedSOPInstanceUID))
                if key not in refs:
                    refs.append(key)
    return out


def _tracking_uids(seg: Dataset) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence if "TrackingUID" in s}


def _algorithm(
    name: str, version: str, *, synthetic: bool, extra: Sequence[str] = ()
) -> AlgorithmIdentification:
    params = list(extra)
    if synthetic:
        params.append(f"{SYNTHETIC_STATEMENT} only; NOT FOR DIAGNOSTIC USE")
    return AlgorithmIdentification(
        name=name[:64], version=str(version)[:64], parameters=params or None,
        family=codes.ALGORITHM_FAMILY, manufacturer="dicomnode",
    )


def _marker_items(markers: Mapping[str, Any]) -> tuple[list[Measurement], list[QualitativeEvaluation]]:
    measurements: list[Measurement] = []
    evaluations: list[QualitativeEvaluation] = []
    for key, concept in codes.MARKERS.items():
        if key not in markers or markers[key] is None:
            continue
        if concept.kind == "flag":
            evaluations.append(QualitativeEvaluation(concept.name, codes.YES if markers[key] else codes.NO))
            continue
        value = finite_or_none(markers[key])
        if value is None:
            log.debug("marker %s is not a finite number (%r): left out", key, markers[key])
            continue
        measurements.append(
            Measurement(name=concept.name, value=value * concept.scale, unit=concept.unit,
                        derivation=concept.derivation)
        )
    return measurements, evaluations


def _prediction_items(prediction: Prediction) -> list[Measurement]:
    """Risk probabilities (percent) and the CAVE score, each with its model's identification."""
    items: list[Measurement] = []
    for risk, concept in ((prediction.expansion, codes.HE_RISK), (prediction.epilepsy, codes.PSE_RISK)):
        if risk is None:
            continue
        # 0.01 % steps: finer digits are float noise in the Decimal String.
        items.append(Measurement(
            name=concept, value=round(100.0 * float(risk.probability), 2), unit=codes.UNIT_PERCENT,
            algorithm_id=_algorithm(risk.model, risk.model_version or "unversioned",
                                    synthetic=risk.synthetic_training)))
    if prediction.cave is not None:
        cave = prediction.cave
        items.append(Measurement(name=codes.CAVE_SCORE, value=float(cave.score), unit=codes.UNIT_SCORE,
                                 algorithm_id=_algorithm(cave.model, cave.model_version,
                                                         synthetic=False)))
    return items


def _overall_evaluation(volumes_ml: Mapping[int, float]) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-13: "Intracranial hemorrhage" Present or Absent for the whole scan.

    Present when any haemorrhage (ICH, IVH, extra-axial) has a volume above 0 mL; oedema alone is
    not haemorrhage. Beside the 0 mL ICH group, it states the negative result of a normal scan
    as one coded item, whatever a reader makes of the measurement groups.
    """
    found = any(volumes_ml.get(v, 0.0) > 0.0 for v in (ICH, IVH, EXTRA_AXIAL))
    container = hd.sr.ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence([hd.sr.CodeContentItem(
        name=codes.INTRACRANIAL_HAEMORRHAGE, value=codes.PRESENT if found else codes.ABSENT,
        relationship_type="CONTAINS")])
    return container


def _volume(value: float) -> Measurement:
    return Measurement(name=codes.VOLUME, value=float(value), unit=codes.UNIT_ML,
                       method=codes.SUM_OF_SEGMENTED_VOXELS)


def build_sr(
    source_datasets: Sequence[Dataset],
    seg: hd.seg.Segmentation,
    measurements: Measurements,
    labels: LabelMap,
    *,
    version: int,
    prediction: Prediction | None = None,
    series_number: int = 9902,
    manufacturer: str = "dicomnode",
    software_version: str | None = None,
    warnings: Sequence[str] = (),
) -> Comprehensive3DSR:
    """Encode the measurements (and predictions) of one series as a TID 1500 report.

    Parameters
    ----------
    source_datasets : sequence of pydicom.Dataset
        The source instances (headers suffice); the first gives patient and study.
    seg : highdicom.seg.Segmentation
        The SEG of the same result version; its segments are referenced by the groups.
    measurements : Measurements
    labels : LabelMap
        Model name, version and training data (``synthetic_training``).
    version : int
        Result version (>= 1); with the source series UID it fixes every UID.
    prediction : Prediction, optional
        The CAVE score and the HE/PSE risks, each with its model's name, version and training
        data; probabilities are written in percent.
    software_version : str, optional
        dicomnode's version, written as Software Versions (PS3.3 C.7.5.1).
    warnings : sequence of str
        QA warnings (docs/qa.md): one TEXT item each in the report's root container.

    Raises
    ------
    ValueError
        No source datasets, or a SEG of another series.
    """
    source_series = _source_series(source_datasets, seg)
    numbers = segment_numbers_by_label(seg)
    sources = _segment_sources(seg)
    tracking = _tracker(numbers, _tracking_uids(seg), source_series, version)
    volumes = {ICH: measurements.ich_volume_ml, IVH: measurements.ivh_volume_ml,
               OEDEMA: measurements.oedema_volume_ml, EXTRA_AXIAL: measurements.extra_axial_volume_ml}
    seg_algorithm = _algorithm(labels.model, labels.model_version, synthetic=labels.synthetic_training,
                               extra=[f"backend={labels.backend}"])
    finding = _FindingContext(seg, source_series, sources, measurements, labels, prediction, seg_algorithm,
                              tracking)
    groups: list[Any] = []
    grouped: dict[int, int] = {}  # label value -> segment number, for the planar groups
    for value, volume_ml in volumes.items():
        name = LABELS[value]
        if name not in numbers or (value != ICH and not volume_ml > 0.0):
            continue
        grouped[value] = numbers[name]
        groups.append(finding.volumetric_group(value, numbers[name], volume_ml))

    # Outlines and ABC/2 lines with image coordinates: what viewers draw (sr_planar). First:
    # OHIF merges groups with one Tracking UID in document order and shows the first five
    # numbers, so the outline's Area comes before the volume, ABC/2 and the markers.
    groups = planar_groups(seg, grouped, tracking, seg_algorithm, volumes) + groups
    report = _report(groups, volumes, warnings, manufacturer, labels)
    sr = Comprehensive3DSR(
        evidence=[*source_datasets, seg],
        content=report,
        series_instance_uid=uids.series_uid(source_series, version, "sr"),
        series_number=series_number,
        sop_instance_uid=uids.instance_uid(source_series, version, "sr", 0),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        record_evidence=False,
        contributing_equipment=[_equipment(manufacturer, labels, software_version)],
        series_description=series_description("SR", labels),
        coding_schemes=codes.coding_schemes(),
        manufacturer_model_name="dicomnode",
        software_versions=software_version,
        specific_character_set=specific_character_set(source_datasets[0]),
    )
    log.info("SR %s: %d group(s) referencing SEG %s", sr.SOPInstanceUID, len(groups), seg.SOPInstanceUID,
             extra={"series_uid": source_series})
    return sr


def _source_series(source_datasets: Sequence[Dataset], seg: hd.seg.Segmentation) -> str:
    """The source series UID; raises ValueError without sources or for a SEG of another series."""
    if not source_datasets:
        raise ValueError("no source datasets")
    source_series = str(source_datasets[0].SeriesInstanceUID)
    seg_sources = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
    if seg_sources != {source_series}:
        raise ValueError(f"SEG references series {sorted(seg_sources)}, not {source_series}")
    return source_series


def _tracker(numbers: Mapping[str, int], tracking: Mapping[int, str], source_series: str,
             version: int) -> Callable[[int, str], TrackingIdentifier]:
    """Tracking identifier of a finding (label value), or of one of its planar parts.

    A finding's UID is its SEG segment's Tracking UID (else derived like the SEG's); a part
    ("outline", "abc2-a", ...) gets a UID of its own and its letter in the identifier.
    """
    def identify(value: int, part: str) -> TrackingIdentifier:
        label = codes.segment_concept(value).label
        if part:
            letter = part.rsplit("-", 1)[-1].upper()
            return TrackingIdentifier(uid=uids.tracking_uid(source_series, version, value, part),
                                      identifier=f"{label} {letter} v{version}"[:64])
        number = numbers[LABELS[value]]
        uid = tracking.get(number) or uids.tracking_uid(source_series, version, value)
        return TrackingIdentifier(uid=uid, identifier=f"{label} v{version}"[:64])

    return identify


@dataclass(frozen=True)
class _FindingContext:
    """What every finding's TID 1411 group shares: the SEG, the model and the measurements."""

    seg: hd.seg.Segmentation
    source_series: str
    sources: Mapping[int, list[tuple[str, str]]]  # segment number -> source images (_segment_sources)
    measurements: Measurements
    labels: LabelMap
    prediction: Prediction | None
    algorithm: AlgorithmIdentification
    tracking: Callable[[int, str], TrackingIdentifier]

    def volumetric_group(self, value: int, number: int,
                         volume_ml: float) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
        """The finding's volume (and, for ICH, its details) on its SEG segment."""
        concept = codes.segment_concept(value)
        items = [_volume(volume_ml)]
        evaluations: list[QualitativeEvaluation] = []
        if value == ICH:
            ich_items, evaluations = _ich_items(self.measurements, self.prediction)
            items += ich_items
        if self.labels.synthetic_training:
            evaluations.append(QualitativeEvaluation(codes.TRAINING_DATA, codes.SYNTHETIC_DATA))
        return VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=self.tracking(value, ""),
            referenced_segment=self.referenced_segment(number),
            finding_type=concept.property_type,
            finding_category=concept.category,
            finding_sites=[FindingSite(concept.anatomic_region)],
            algorithm_id=self.algorithm,
            measurements=items,
            qualitative_evaluations=evaluations or None,
        )

    def referenced_segment(self, number: int) -> ReferencedSegment:
        """The SEG segment, with the source images of its frames (else the source series)."""
        refs = self.sources.get(number, [])
        return ReferencedSegment(
            sop_class_uid=self.seg.SOPClassUID,
            sop_instance_uid=self.seg.SOPInstanceUID,
            segment_number=number,
            source_images=[SourceImageForSegmentation(c, i) for c, i in refs] or None,
            source_series=None if refs else SourceSeriesForSegmentation(self.source_series),
        )


def _ich_items(measurements: Measurements,
               prediction: Prediction | None) -> tuple[list[Measurement], list[QualitativeEvaluation]]:
    """ICH's items after its volume: ABC/2, site, cortical involvement, markers, predictions."""
    items = [Measurement(name=codes.ABC2_VOLUME, value=float(measurements.abc2_volume_ml),
                         unit=codes.UNIT_ML)]
    evaluations: list[QualitativeEvaluation] = []
    if measurements.site in codes.SITES:
        evaluations.append(QualitativeEvaluation(codes.HAEMORRHAGE_SITE, codes.SITES[measurements.site]))
    evaluations.append(QualitativeEvaluation(
        codes.CORTICAL_INVOLVEMENT, codes.YES if measurements.cortical_involvement else codes.NO))
    marker_items, marker_evaluations = _marker_items(measurements.markers)
    items += marker_items
    evaluations += marker_evaluations
    if prediction is not None:
        items += _prediction_items(prediction)
    return items, evaluations


def _report(groups: list[Any], volumes: Mapping[int, float], warnings: Sequence[str],
            manufacturer: str, labels: LabelMap) -> MeasurementReport:
    """TID 1500 with a device observer, the groups, the overall evaluation and the QA warnings."""
    observer = ObserverContext(
        observer_type=pydicom_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=_device_uid(manufacturer),
            name="dicomnode",
            manufacturer_name=manufacturer,
            model_name=f"{labels.model} {labels.model_version}"[:64],
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.CT_OF_HEAD,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_overall_evaluation(volumes))
    for text in warnings:  # QA warnings: one TEXT item each, read first by the radiologist
        report[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.QA_WARNING, value=text[:1024], relationship_type="CONTAINS"))
    return report


def _equipment(manufacturer: str, labels: LabelMap, software_version: str | None) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT,
        manufacturer_model_name=f"{labels.model} ({labels.backend})"[:64],
        software_versions=software_version,
        contribution_description=f"measurements of segmentation model {labels.model}"[:64],
    )
