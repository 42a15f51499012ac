"""The product in one screen: load -> segment -> measure (-> predict) -> encode -> outbox.

``analyse`` runs the stages on one series' files; ``process_series`` is what the worker runs for
a claimed job, and the one place that catches a stage's error and records it on the job as
``Type: message``. Stages never call each other; only this module joins them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.config import Settings
from dicomnode.db.session import SessionFactory
from dicomnode.domain import CTVolume, LabelMap, Measurements, SeriesRef
from dicomnode.errors import DicomnodeError
from dicomnode.jobs.queue import finish
from dicomnode.load.volume import load_series
from dicomnode.logs import log_context
from dicomnode.measure import measure
from dicomnode.receive.storage import RESULTS_DIR, fsync_dir
from dicomnode.segment.base import SegmentationBackend
from dicomnode.segment.registry import build_backend
from dicomnode.send.outbox import enqueue_in

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every job needs, built once per process (the models stay loaded)."""

    settings: Settings
    backend: SegmentationBackend
    predictors: Any = None  # dicomnode.predict.serving.Predictors, when prediction is on


def make_context(settings: Settings) -> Context:
    predictors = None
    p = settings.prediction
    if p.enabled:
        from dicomnode.predict.serving import Predictors

        predictors = Predictors.load(p.he_model, p.pse_model, p.clinical_sidecar)
    return Context(settings=settings, backend=build_backend(settings.segmentation),
                   predictors=predictors)


@dataclass(frozen=True)
class Analysis:
    volume: CTVolume
    labels: LabelMap
    measurements: Measurements
    timings_s: dict[str, float] = field(default_factory=dict)
    predictions: dict[str, Any] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[stage] = round(time.perf_counter() - start, 3)


def analyse(paths: Sequence[Path], ctx: Context) -> Analysis:
    """Load, segment and measure one series."""
    timer = _Timer()
    with timer("load"):
        volume = load_series(paths)
    with timer("segment"):
        labels = ctx.backend.segment(volume)
    with timer("measure"):
        measurements = measure(volume, labels)
    predictions: dict[str, Any] = {}
    if ctx.predictors is not None:
        with timer("predict"):
            predictions = ctx.predictors.predict(volume, labels, measurements)
    return Analysis(volume, labels, measurements, timer.timings_s, predictions)


_SOURCE_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def source_datasets(paths: Sequence[Path], volume: CTVolume) -> list[Any]:
    """The source instances in the volume's slice order (each multi-frame instance once)."""
    import pydicom

    by_uid = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        # Type 2 attributes that real, anonymised series sometimes lack: our objects must carry
        # them (empty), and highdicom copies them from the source (PS3.3 C.7.1.1, C.7.2.1).
        for keyword in _SOURCE_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        by_uid[str(ds.SOPInstanceUID)] = ds
    order = list(dict.fromkeys(s.sop_instance_uid for s in volume.slices))
    return [by_uid[u] for u in order if u in by_uid]


def _write_durably(ds: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def encode_outputs(analysis: Analysis, paths: Sequence[Path], out_dir: Path, *,
                   version: int) -> list[dict[str, Any]]:
    """SEG, TID 1500 SR and overlay images (plus PNG previews) written durably to ``out_dir``.

    Returns one item per DICOM object: kind, absolute path, SOP Class and Instance UIDs.
    """
    from dicomnode import __version__
    from dicomnode.encode.overlay import build_overlays, write_previews
    from dicomnode.encode.seg import build_seg
    from dicomnode.encode.sr import build_sr

    sources = source_datasets(paths, analysis.volume)
    volume, labels, m = analysis.volume, analysis.labels, analysis.measurements
    predictions = None
    if analysis.predictions:
        from dicomnode.predict.serving import for_encoders

        predictions = for_encoders(analysis.predictions)
    seg = build_seg(sources, volume, labels, version=version, software_version=__version__)
    sr = build_sr(sources, seg, m, labels, version=version, predictions=predictions)
    overlays = build_overlays(sources, volume, labels, m, version=version,
                              predictions=predictions)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overlay").mkdir(exist_ok=True)
    objects = [("seg", seg, out_dir / "seg.dcm"), ("sr", sr, out_dir / "sr.dcm")] + [
        ("overlay", ds, out_dir / "overlay" / f"{i:04d}.dcm") for i, ds in enumerate(overlays)]
    items = []
    for kind, ds, path in objects:
        _write_durably(ds, path)
        items.append({"kind": kind, "path": path, "sop_class_uid": str(ds.SOPClassUID),
                      "sop_instance_uid": str(ds.SOPInstanceUID)})
    for folder in {out_dir, out_dir / "overlay"}:
        fsync_dir(folder)
    write_previews(out_dir / "previews", volume, labels, m, predictions=predictions)
    return items


def result_record(series_instance_uid: str, *, analysis: Analysis | None = None,
                  status: str = "done", reason: str = "",
                  timings_s: dict[str, float] | None = None) -> dict[str, Any]:
    """The ``result.json`` content: numbers are 0.0 when there is no blood, never null."""
    record: dict[str, Any] = {
        "series_instance_uid": series_instance_uid, "status": status, "reason": reason,
        "backend": "", "model": "", "model_version": "", "synthetic_training": False,
        "ich_volume_ml": 0.0, "ivh_volume_ml": 0.0, "abc2_volume_ml": 0.0,
        "oedema_volume_ml": 0.0, "extra_axial_volume_ml": 0.0,
        "cortical_involvement": False, "site": "none", "largest_area_slice": None,
        "markers": {}, "warnings": [], "timings_s": dict(timings_s or {}),
        "he_probability": None, "pse_probability": None, "cave_score": None,
        "cave_partial": None,
    }
    if analysis is not None:
        m, lab = analysis.measurements, analysis.labels
        record.update({
            "backend": lab.backend, "model": lab.model, "model_version": lab.model_version,
            "synthetic_training": lab.synthetic_training,
            "ich_volume_ml": round(float(m.ich_volume_ml), 3),
            "ivh_volume_ml": round(float(m.ivh_volume_ml), 3),
            "abc2_volume_ml": round(float(m.abc2_volume_ml), 3),
            "oedema_volume_ml": round(float(m.oedema_volume_ml), 3),
            "extra_axial_volume_ml": round(float(m.extra_axial_volume_ml), 3),
            "cortical_involvement": bool(m.cortical_involvement), "site": m.site,
            "largest_area_slice": m.largest_area_slice, "markers": dict(m.markers),
            "warnings": list(analysis.volume.warnings),
            "resampled": analysis.volume.resampled,
        })
        record.update(analysis.predictions)
        record["timings_s"].update(analysis.timings_s)
    return record


def write_outputs(out_dir: Path, record: dict[str, Any], analysis: Analysis | None) -> None:
    """``result.json`` and, when analysed, the label map as NIfTI (``labels.nii.gz``)."""
    import SimpleITK as sitk

    out_dir.mkdir(parents=True, exist_ok=True)
    if analysis is not None:
        sitk.WriteImage(analysis.labels.image, str(out_dir / "labels.nii.gz"), True)
    tmp = out_dir / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(out_dir / "result.json")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def process_series(ref: SeriesRef, ctx: Context, sessions: SessionFactory) -> dict[str, Any]:
    """Run one claimed job; record success or ``Type: message`` on the job. Never raises for
    a stage's failure, so one bad series cannot block the queue."""
    out_dir = (ctx.settings.storage.path / RESULTS_DIR / ref.series_instance_uid
               / f"v{ref.version}")
    with log_context(series_uid=ref.series_instance_uid, job_id=ref.job_id):
        start = time.perf_counter()
        try:
            analysis = analyse(ref.instance_paths, ctx)
            encode_start = time.perf_counter()
            items = encode_outputs(analysis, ref.instance_paths, out_dir, version=ref.version)
            record = result_record(ref.series_instance_uid, analysis=analysis)
            record["timings_s"]["encode"] = round(time.perf_counter() - encode_start, 3)
            write_outputs(out_dir, record, analysis)
        except Exception as exc:  # noqa: BLE001 - the one place that records a job's failure
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, DicomnodeError | OSError | ValueError | MemoryError):
                log.exception("unexpected error in job")
            log.error("job failed: %s", error)
            record = result_record(ref.series_instance_uid, status="failed", reason=error,
                                   timings_s={"total": round(time.perf_counter() - start, 3)})
            finish(sessions, ref.job_id, error=error, timings_s=record["timings_s"])
            return record
        record["timings_s"]["total"] = round(time.perf_counter() - start, 3)
        root = ctx.settings.storage.path
        rel = [{**i, "path": i["path"].relative_to(root).as_posix()} for i in items]
        finish(sessions, ref.job_id, timings_s=record["timings_s"],
               outputs={"dir": out_dir.relative_to(root).as_posix(), "items": rel},
               also=lambda session: enqueue_in(session, ref.job_id, rel,
                                               ctx.settings.destinations))
        log.info("job done: ICH %.1f mL, IVH %.1f mL (%s)", record["ich_volume_ml"],
                 record["ivh_volume_ml"], record["backend"])
        return record
