"""A follow-up's comparison with its baseline in its TID 1500 report (``build_sr``'s output).

Placement (PS3.16 TID 1500, TID 1411, TID 1501, TID 1502):

- Imaging Measurements (row 6) gains measurement groups for both time points, each with a
  Time Point Context (TID 1502):
  - **baseline** (type Baseline, order 1): a Volumetric ROI group (TID 1411) per finding of the
    prior (ICH; IVH when present) that references the prior's SEG segment and its CT series,
    with the volume and, on ICH, the expansion risk predicted at baseline. Without the prior's
    SEG, one Measurement Group (TID 1501) with the same numbers.
  - **follow-up** (order 2): a Volumetric ROI group on this scan's ICH segment (its Tracking
    UID) with the volume and the change: ICH change (mL, %), IVH change, interval; coded
    haematoma expansion, new IVH and registration trusted (Yes/No).
- Qualitative Evaluations (row 12, UMLS C0034375) at the report's root: haematoma expansion and
  new IVH (coded), the definition, the prior series and the registration note (text).

The prior's SEG is added to the evidence (Pertinent Other Evidence, or Current Requested
Procedure Evidence when it is of this study; PS3.3 C.17.2). Side effects: changes the SR
dataset given.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContainerContentItem,
    FindingSite,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    ReferencedSegment,
    SourceSeriesForSegmentation,
    TextContentItem,
    TimePointContext,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from dicomnode.domain import ICH, IVH, ComparedPrior, Comparison, Risk, SegmentationRef

from . import codes, uids
from .seg import segment_numbers_by_label

__all__ = ["add_comparison"]

_IMAGING_MEASUREMENTS = "126010"


def _yes_no(value: bool) -> Code:
    return codes.YES if value else codes.NO


def _volume(value_ml: float) -> Measurement:
    return Measurement(name=codes.VOLUME, value=float(value_ml), unit=codes.UNIT_ML,
                       method=codes.SUM_OF_SEGMENTED_VOXELS)


def _risk(risk: Risk | None, probability: float | None) -> list[Measurement]:
    """The expansion risk predicted on the baseline (percent), with its model when known."""
    if risk is None:
        return [] if probability is None else [Measurement(
            name=codes.HE_RISK, value=round(100.0 * probability, 2), unit=codes.UNIT_PERCENT)]
    algorithm = AlgorithmIdentification(
        name=risk.model[:64], version=(risk.model_version or "unversioned")[:64],
        parameters=["Fit on synthetic data only; NOT FOR DIAGNOSTIC USE"]
        if risk.synthetic_training else None)
    return [Measurement(name=codes.HE_RISK, value=round(100.0 * float(risk.probability), 2),
                        unit=codes.UNIT_PERCENT, algorithm_id=algorithm)]


def _time_point(c: Comparison, *, baseline: bool) -> TimePointContext:
    if baseline:
        return TimePointContext(f"baseline {c.prior_study_datetime}".strip(),
                                time_point_type=codes.TIME_POINT_BASELINE, time_point_order=1)
    return TimePointContext("follow-up", time_point_order=2)


def _group(value: int, tracking: TrackingIdentifier, time_point: TimePointContext,
           measurements: list[Measurement], evaluations: list[QualitativeEvaluation],
           segment: ReferencedSegment | None) -> Any:
    """A TID 1411 group on ``segment``, or a TID 1501 group without one, for finding ``value``."""
    concept = codes.segment_concept(value)
    sites = [FindingSite(concept.anatomic_region)]
    if segment is None:
        return MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, time_point_context=time_point,
            finding_type=concept.property_type, finding_category=concept.category,
            finding_sites=sites, measurements=measurements,
            qualitative_evaluations=evaluations or None)
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_segment=segment, time_point_context=time_point,
        finding_type=concept.property_type, finding_category=concept.category,
        finding_sites=sites, measurements=measurements,
        qualitative_evaluations=evaluations or None)


def _baseline_groups(compared: ComparedPrior, follow_series: str, version: int) -> list[Any]:
    """TID 1411 groups on the prior's SEG segments; one TID 1501 group without its SEG."""
    c, ref = compared.comparison, compared.segmentation
    volumes = {ICH: c.prior_ich_volume_ml, IVH: c.prior_ivh_volume_ml}
    risk = _risk(compared.he_risk, c.prior_he_probability)
    time_point = _time_point(c, baseline=True)
    if ref is None or ICH not in ref.segments:
        tracking = TrackingIdentifier(
            uid=uids.tracking_uid(follow_series, version, ICH, "baseline"),
            identifier=f"ICH baseline v{version}")
        return [_group(ICH, tracking, time_point,
                       [_volume(volumes[ICH]), _volume(volumes[IVH]), *risk], [], None)]
    groups: list[Any] = []
    for value, volume_ml in volumes.items():
        if value not in ref.segments or (value != ICH and not volume_ml > 0):
            continue
        number, tracking_uid = ref.segments[value]
        tracking = TrackingIdentifier(
            uid=tracking_uid or uids.tracking_uid(follow_series, version, value, "baseline"),
            identifier=f"{codes.segment_concept(value).label} baseline")
        groups.append(_group(value, tracking, time_point,
                             [_volume(volume_ml), *(risk if value == ICH else [])], [],
                             _segment(ref, number)))
    return groups


def _segment(ref: SegmentationRef, number: int) -> ReferencedSegment:
    return ReferencedSegment(sop_class_uid=ref.sop_class_uid, sop_instance_uid=ref.sop_instance_uid,
                             segment_number=number,
                             source_series=SourceSeriesForSegmentation(ref.source_series_instance_uid))


def _followup_group(c: Comparison, seg: Dataset, version: int) -> Any:
    """The change, on this scan's ICH segment (TID 1411), else as a TID 1501 group."""
    follow_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    items = [_volume(c.ich_volume_ml),
             Measurement(name=codes.ICH_CHANGE, value=float(c.ich_change_ml), unit=codes.UNIT_ML)]
    if c.ich_change_pct is not None:
        items.append(Measurement(name=codes.ICH_CHANGE_PCT, value=float(c.ich_change_pct),
                                 unit=codes.UNIT_PERCENT))
    items.append(Measurement(name=codes.IVH_CHANGE, value=float(c.ivh_change_ml), unit=codes.UNIT_ML))
    if c.interval_h is not None:
        items.append(Measurement(name=codes.INTERVAL, value=float(c.interval_h), unit=codes.UNIT_HOUR))
    evaluations = [QualitativeEvaluation(codes.HE_OBSERVED, _yes_no(c.expansion)),
                   QualitativeEvaluation(codes.NEW_IVH, _yes_no(c.new_ivh)),
                   QualitativeEvaluation(codes.REGISTRATION_TRUSTED, _yes_no(c.registration.trusted))]
    number = segment_numbers_by_label(seg).get("ICH")
    tracking = {int(s.SegmentNumber): str(s.get("TrackingUID", "")) for s in seg.SegmentSequence}
    uid = (tracking.get(number) if number is not None else None) or uids.tracking_uid(
        follow_series, version, ICH, "follow-up")
    segment = None if number is None else ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=number, source_series=SourceSeriesForSegmentation(follow_series))
    return _group(ICH, TrackingIdentifier(uid=uid, identifier=f"ICH follow-up v{version}"),
                  _time_point(c, baseline=False), items, evaluations, segment)


def _qualitative_evaluations(c: Comparison) -> ContainerContentItem:
    """TID 1500 row 12: the findings of the whole report, coded, with their context as text."""
    items: list[hd.sr.ContentItem] = [
        CodeContentItem(name=codes.HE_OBSERVED, value=_yes_no(c.expansion),
                        relationship_type="CONTAINS"),
        CodeContentItem(name=codes.NEW_IVH, value=_yes_no(c.new_ivh), relationship_type="CONTAINS"),
        TextContentItem(name=codes.HE_DEFINITION, value=c.definition[:1024],
                        relationship_type="CONTAINS"),
        TextContentItem(name=codes.PRIOR_SERIES, value=c.prior_series_instance_uid,
                        relationship_type="CONTAINS")]
    if c.registration.message:
        items.append(TextContentItem(name=codes.REGISTRATION_NOTE,
                                     value=c.registration.message[:1024],
                                     relationship_type="CONTAINS"))
    container = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                     relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _add_evidence(sr: Dataset, ref: SegmentationRef) -> None:
    """The prior's SEG in the evidence sequences (PS3.3 C.17.2.2, C.17.2.3)."""
    keyword = ("CurrentRequestedProcedureEvidenceSequence"
               if ref.study_instance_uid == str(sr.StudyInstanceUID)
               else "PertinentOtherEvidenceSequence")
    instance = Dataset()
    instance.ReferencedSOPClassUID = ref.sop_class_uid
    instance.ReferencedSOPInstanceUID = ref.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = ref.series_instance_uid
    series.ReferencedSOPSequence = DicomSequence([instance])
    study = Dataset()
    study.StudyInstanceUID = ref.study_instance_uid
    study.ReferencedSeriesSequence = DicomSequence([series])
    if keyword not in sr:
        setattr(sr, keyword, DicomSequence())
    getattr(sr, keyword).append(study)


def _append_evaluations(sr: Dataset, evaluations: Dataset) -> None:
    """TID 1500 has one Qualitative Evaluations container (row 12, 0-1): the comparison's items
    join the one ``build_sr`` wrote (the whole scan's haemorrhage finding), or start it."""
    name = codes.QUALITATIVE_EVALUATIONS
    existing = next((item for item in sr.ContentSequence
                     if codes.as_tuple(item.ConceptNameCodeSequence[0]) == codes.as_tuple(name)),
                    None)
    if existing is None:
        sr.ContentSequence.append(evaluations)
    else:
        existing.ContentSequence.extend(evaluations.ContentSequence)


def add_comparison(sr: Dataset, compared: ComparedPrior, seg: Dataset, *, version: int) -> None:
    """Add the comparison with the baseline to ``sr``, a TID 1500 report built by ``build_sr``
    from ``seg`` (this scan's SEG of the same result version).

    Raises
    ------
    ValueError
        ``sr`` has no Imaging Measurements container (not a TID 1500 report).
    """
    c = compared.comparison
    follow_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    container = next((item for item in sr.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == _IMAGING_MEASUREMENTS), None)
    if container is None:
        raise ValueError("the SR has no Imaging Measurements container (TID 1500 row 6)")
    if "ContentSequence" not in container:
        container.ContentSequence = DicomSequence()
    for group in [*_baseline_groups(compared, follow_series, version),
                  _followup_group(c, seg, version)]:
        container.ContentSequence.extend(group)
    _append_evaluations(sr, _qualitative_evaluations(c))
    if compared.segmentation is not None:
        _add_evidence(sr, compared.segmentation)
