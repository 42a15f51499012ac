"""The follow-up half of the pipeline: which analysed scans a series is compared with, and the
comparison in its ``result.json`` (``dicomnode run`` and ``serve`` alike).

``compare`` gets the prior's stored results from here (its ``result.json`` and
``labels.nii.gz`` in the storage folder, its CT from its instances), never by calling an earlier
stage; encode gets the baseline as a ``ComparedPrior`` (with the prior's ``seg.dcm`` header as a
``SegmentationRef``, for the SR's reference). Only :mod:`dicomnode.pipeline` calls this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.compare import (
    ExpansionRule,
    ScanKey,
    choose_priors,
    compare_scans,
    compare_with_plane,
    patient_key,
    scan_datetime,
)
from dicomnode.config import Settings
from dicomnode.db.priors import patient_series
from dicomnode.db.session import SessionFactory
from dicomnode.domain import (
    LABELS,
    ComparedPrior,
    Comparison,
    CTVolume,
    FollowupScan,
    LabelMap,
    Prediction,
    Risk,
    SegmentationRef,
    SeriesRef,
)
from dicomnode.encode.seg import segment_numbers_by_label
from dicomnode.errors import DicomnodeError
from dicomnode.load.volume import load_series
from dicomnode.storage import read_result

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prior:
    """An earlier analysed scan of the patient: its stored results and its CT instances."""

    series_instance_uid: str
    acquired: datetime
    results: Path  # the folder of its result.json and labels.nii.gz
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class Followup:
    """The comparisons of a follow-up (the baseline first), what encode shows of the baseline,
    and the warnings."""

    comparisons: list[Comparison]
    baseline: ComparedPrior | None
    warnings: list[str]


def compare_with_priors(series_uid: str, volume: CTVolume, labels: LabelMap,
                        prediction: Prediction | None, acquired: datetime | None,
                        priors: Sequence[Prior], settings: Settings, *,
                        key_slice: int | None = None) -> Followup:
    """One comparison per prior, oldest (the baseline) first, and the warnings: a prior that
    cannot be compared, a registration that is not trusted. The baseline's comparison also gets
    the prior on the follow-up's ``key_slice``, its predicted risk and its SEG, for encode."""
    f = settings.followup
    rule = ExpansionRule(abs_ml=f.expansion_abs_ml, rel=f.expansion_rel, new_ivh_ml=f.new_ivh_ml,
                         min_correlation=f.min_correlation)
    he = prediction.expansion if prediction else None
    current = FollowupScan(series_uid, acquired, volume.image, labels.image,
                           he.probability if he else None)
    comparisons: list[Comparison] = []
    baseline: ComparedPrior | None = None
    warnings: list[str] = []
    for prior in sorted(priors, key=lambda p: p.acquired):
        try:
            scan, risk = load_prior(prior)
            if comparisons:
                comparisons.append(compare_scans(scan, current, rule))
                continue
            comparison, plane = compare_with_plane(scan, current, rule, key_slice=key_slice)
            comparisons.append(comparison)
            baseline = ComparedPrior(comparison, plane, risk, prior_segmentation(prior.results))
        except (DicomnodeError, OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("follow-up: prior %s not compared: %s", prior.series_instance_uid, exc)
            warnings.append(f"prior {prior.series_instance_uid} not compared: "
                            f"{type(exc).__name__}: {exc}")
    warnings += [f"follow-up registration to {c.prior_series_instance_uid} not trusted: "
                 f"{c.registration.message}" for c in comparisons if not c.registration.trusted]
    return Followup(comparisons, baseline, warnings)


def record_comparisons(record: dict[str, Any], followup: Followup | None) -> None:
    """``comparison`` (against the baseline, the earliest prior) and ``comparisons`` (one per
    prior, most recent last) in ``record``, plus the warnings."""
    if followup is None:
        return
    record["comparisons"] = [c.as_record() for c in followup.comparisons]
    record["comparison"] = record["comparisons"][0] if followup.comparisons else None
    record["warnings"] += list(followup.warnings)


def load_prior(prior: Prior) -> tuple[FollowupScan, Risk | None]:
    """The prior's CT (from its instances), its stored label map and its expansion risk."""
    record, labels = read_result(prior.results)
    if record.get("status") != "done" or labels is None:
        raise ValueError(f"its result is {record.get('status')!r}, without a label map")
    he = record.get("he_probability")
    probability = float(he) if isinstance(he, int | float) else None
    risk = None
    if probability is not None and record.get("he_model"):
        risk = Risk(probability, str(record["he_model"]), str(record.get("he_model_version") or ""),
                    bool(record.get("he_synthetic_training")))
    scan = FollowupScan(prior.series_instance_uid, prior.acquired,
                        load_series(prior.paths).image, labels, probability)
    return scan, risk


def prior_segmentation(results: Path) -> SegmentationRef | None:
    """The prior's SEG (``seg.dcm`` beside its ``result.json``) as the SR references it; None
    when it is missing or unreadable (the SR then describes the prior without the reference)."""
    try:
        seg = pydicom.dcmread(results / "seg.dcm", stop_before_pixels=True)
        by_name = segment_numbers_by_label(seg)
        tracking = {int(s.SegmentNumber): str(s.get("TrackingUID", "")) for s in seg.SegmentSequence}
        segments = {value: (by_name[name], tracking.get(by_name[name], ""))
                    for value, name in LABELS.items() if name in by_name}
        return SegmentationRef(
            sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
            series_instance_uid=str(seg.SeriesInstanceUID),
            study_instance_uid=str(seg.StudyInstanceUID),
            source_series_instance_uid=str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID),
            segments=segments)
    except (OSError, InvalidDicomError, AttributeError, KeyError, IndexError, ValueError) as exc:
        log.warning("follow-up: the prior's SEG in %s is not referenced: %s", results, exc)
        return None


def serve_priors(ref: SeriesRef, settings: Settings, sessions: SessionFactory
                 ) -> tuple[datetime | None, list[Prior], list[str]]:
    """A claimed series' acquisition time, its analysed priors, and the priors still queued or
    being analysed (the follow-up waits for those)."""
    if not settings.followup.enabled:
        return None, [], []
    attrs, stored = patient_series(sessions, ref.series_instance_uid, settings.storage.path)
    key = ScanKey(ref.series_instance_uid, patient_key(attrs), scan_datetime(attrs))
    by_uid = {s.series_instance_uid: s for s in stored}
    keys = [ScanKey(s.series_instance_uid, patient_key(s.attributes), scan_datetime(s.attributes))
            for s in stored]
    chosen = folder_priors(key, keys, settings)
    waiting = [k.series_instance_uid for k in chosen
               if by_uid[k.series_instance_uid].job_state in ("queued", "processing")]
    priors = []
    for k in chosen:
        s = by_uid[k.series_instance_uid]
        if s.job_state == "done" and s.results is not None and k.acquired is not None:
            priors.append(Prior(k.series_instance_uid, k.acquired, s.results, s.paths))
    return key.acquired, priors, waiting


def folder_priors(key: ScanKey, done: Sequence[ScanKey], settings: Settings) -> list[ScanKey]:
    """The analysed scans ``key`` is compared with (none when follow-ups are off)."""
    f = settings.followup
    if not f.enabled:
        return []
    return choose_priors(key, done, min_interval_h=f.min_interval_h,
                         max_interval_h=f.max_interval_h)
