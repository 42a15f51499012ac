"""The follow-up half of the pipeline: which analysed scans a series is compared with, and the
comparison in its ``result.json`` (``dicomnode run`` and ``serve`` alike).

``compare`` gets the prior's stored results from here (its ``result.json`` and
``labels.nii.gz`` in the storage folder, its CT from its instances), never by calling an earlier
stage. Only :mod:`dicomnode.pipeline` calls this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dicomnode.compare import (
    ExpansionRule,
    ScanKey,
    choose_priors,
    compare_scans,
    patient_key,
    scan_datetime,
)
from dicomnode.config import Settings
from dicomnode.db.priors import patient_series
from dicomnode.db.session import SessionFactory
from dicomnode.domain import Comparison, CTVolume, FollowupScan, LabelMap, Prediction, SeriesRef
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


def compare_with_priors(series_uid: str, volume: CTVolume, labels: LabelMap,
                        prediction: Prediction | None, acquired: datetime | None,
                        priors: Sequence[Prior], settings: Settings
                        ) -> tuple[list[Comparison], list[str]]:
    """One comparison per prior, oldest (the baseline) first, and the warnings: a prior that
    cannot be compared, a registration that is not trusted."""
    f = settings.followup
    rule = ExpansionRule(abs_ml=f.expansion_abs_ml, rel=f.expansion_rel, new_ivh_ml=f.new_ivh_ml,
                         min_correlation=f.min_correlation)
    he = prediction.expansion if prediction else None
    current = FollowupScan(series_uid, acquired, volume.image, labels.image,
                           he.probability if he else None)
    comparisons: list[Comparison] = []
    warnings: list[str] = []
    for prior in sorted(priors, key=lambda p: p.acquired):
        try:
            comparisons.append(compare_scans(load_prior(prior), current, rule))
        except (DicomnodeError, OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("follow-up: prior %s not compared: %s", prior.series_instance_uid, exc)
            warnings.append(f"prior {prior.series_instance_uid} not compared: "
                            f"{type(exc).__name__}: {exc}")
    warnings += [f"follow-up registration to {c.prior_series_instance_uid} not trusted: "
                 f"{c.registration.message}" for c in comparisons if not c.registration.trusted]
    return comparisons, warnings


def record_comparisons(record: dict[str, Any], comparisons: Sequence[Comparison],
                       warnings: Sequence[str]) -> None:
    """``comparison`` (against the baseline, the earliest prior) and ``comparisons`` (one per
    prior, most recent last) in ``record``, plus the warnings."""
    record["comparisons"] = [c.as_record() for c in comparisons]
    record["comparison"] = record["comparisons"][0] if comparisons else None
    record["warnings"] += list(warnings)


def load_prior(prior: Prior) -> FollowupScan:
    """The prior's CT (from its instances) and its stored label map and expansion risk."""
    record, labels = read_result(prior.results)
    if record.get("status") != "done" or labels is None:
        raise ValueError(f"its result is {record.get('status')!r}, without a label map")
    he = record.get("he_probability")
    return FollowupScan(prior.series_instance_uid, prior.acquired, load_series(prior.paths).image,
                        labels, float(he) if isinstance(he, int | float) else None)


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
