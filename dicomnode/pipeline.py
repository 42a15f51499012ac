"""The product in one screen: load -> qa -> segment -> measure -> qa -> predict -> encode -> outbox.

``run_series`` is the one orchestration of the stages: the worker runs it for a claimed job
(``process_series``, which then records the job and queues the outputs for delivery in one
transaction) and ``dicomnode run`` for each eligible series found in a folder
(``process_folder``). It is the one place that catches a stage's error and records it as
``Type: message``. Stages never call each other; only this module joins them.

QA (docs/qa.md) runs after load (input checks) and after measure (output checks and the second
reader). A ``fail`` ends the series as ``not_analysed`` with the reason ``QA: <first reason>``:
no SEG and no risks, but a "not analysed" key image and SR saying why. A ``warn`` sends the
results with the warning on the SR, the overlays and the summary image.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session

from dicomnode import __version__
from dicomnode.assemble.selection import evaluate
from dicomnode.assemble.stack_summary import series_geometry
from dicomnode.compare import ScanKey, in_order, patient_key, scan_datetime
from dicomnode.config import Settings
from dicomnode.db.outcomes import record_analysis
from dicomnode.db.session import SessionFactory
from dicomnode.domain import (
    ComparedPrior,
    Comparison,
    CTVolume,
    EncodedObject,
    LabelMap,
    Measurements,
    Prediction,
    QAReport,
    SeriesRef,
)
from dicomnode.encode.comparison_image import build_comparison_image
from dicomnode.encode.not_analysed import build_not_analysed_image, build_not_analysed_sr
from dicomnode.encode.overlay import build_overlays, write_previews
from dicomnode.encode.preview import write_png
from dicomnode.encode.seg import build_seg
from dicomnode.encode.sr import build_sr
from dicomnode.encode.sr_followup import add_comparison
from dicomnode.errors import DicomnodeError, InstanceRejected
from dicomnode.followups import (
    Followup,
    Prior,
    compare_with_priors,
    folder_priors,
    record_comparisons,
    serve_priors,
)
from dicomnode.jobs.queue import defer, finish
from dicomnode.load.volume import load_series
from dicomnode.logs import log_context
from dicomnode.measure import measure
from dicomnode.pacs_priors import pacs_prior_wait, prior_search
from dicomnode.predict.serving import Predictors, prediction_record
from dicomnode.qa import compare_readers, input_checks, output_checks
from dicomnode.receive.checks import STORED_CLASSES, check_uid, read_header
from dicomnode.segment.base import SegmentationBackend
from dicomnode.segment.registry import build_backend, build_second_reader
from dicomnode.send.outbox import enqueue_in
from dicomnode.storage import fsync_path, results_dir, write_dataset_durably

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every job needs, built once per process (the models stay loaded)."""

    settings: Settings
    backend: SegmentationBackend
    predictors: Predictors | None = None
    second_reader: SegmentationBackend | None = None  # [qa] second_reader, when on


def make_context(settings: Settings) -> Context:
    p = settings.prediction
    predictors = Predictors.load(p.he_model, p.pse_model, p.clinical_sidecar) if p.enabled else None
    return Context(settings=settings, backend=build_backend(settings.segmentation),
                   predictors=predictors,
                   second_reader=build_second_reader(settings.segmentation, settings.qa))


@dataclass(frozen=True)
class Analysis:
    volume: CTVolume
    labels: LabelMap
    measurements: Measurements
    prediction: Prediction | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    qa: QAReport = field(default_factory=QAReport)


@dataclass(frozen=True)
class NotAnalysed:
    """A series QA refused: the volume (and, after the output checks, the labels) and why."""

    volume: CTVolume
    qa: QAReport
    labels: LabelMap | None = None
    measurements: Measurements | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return f"QA: {self.qa.reasons('fail')[0]}"


@dataclass(frozen=True)
class SeriesRun:
    """The outcome of one series: its ``result.json`` record and the DICOM objects written."""

    record: dict[str, Any]
    objects: tuple[EncodedObject, ...] = ()
    prediction: Prediction | None = None  # with the features, for the learning loop
    comparisons: tuple[Comparison, ...] = ()

    @property
    def failed(self) -> bool:
        return self.record["status"] == "failed"

    @property
    def not_analysed(self) -> bool:
        return self.record["status"] == "not_analysed"


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


def analyse(paths: Sequence[Path], ctx: Context) -> Analysis | NotAnalysed:
    """Load, check, segment, measure, check and predict one series (QA: docs/qa.md)."""
    timer = _Timer()
    qa_cfg = ctx.settings.qa
    qa = QAReport()
    with timer("load"):
        volume = load_series(paths)
    if qa_cfg.enabled:
        with timer("qa_input"):
            qa = input_checks(volume, qa_cfg)
        if qa.failed:
            return NotAnalysed(volume, qa, timings_s=timer.timings_s)
    with timer("segment"):
        labels = ctx.backend.segment(volume)
    with timer("measure"):
        measurements = measure(volume, labels)
    if qa_cfg.enabled:
        with timer("qa_output"):
            qa = qa.extend(output_checks(volume, labels, measurements, qa_cfg))
    if ctx.second_reader is not None and not qa.failed:
        with timer("second_reader"):
            second = ctx.second_reader.segment(volume)
        qa = qa.extend(compare_readers(labels, second, qa_cfg))
    if qa.failed:
        return NotAnalysed(volume, qa, labels, measurements, timer.timings_s)
    prediction = None
    if ctx.predictors is not None:
        with timer("predict"):
            prediction = ctx.predictors.predict(volume, labels, measurements)
    return Analysis(volume, labels, measurements, prediction, timer.timings_s, qa)


def run_series(paths: Sequence[Path], series_uid: str, ctx: Context, out_dir: Path, *,
               version: int = 1, acquired: datetime | None = None,
               priors: Sequence[Prior] = (),
               prior_searched: Sequence[dict[str, Any]] = ()) -> SeriesRun:
    """Analyse and encode one series into ``out_dir`` (``result.json`` whatever happens).

    ``prior_searched``: the PACS queries made for this series' prior (``prior_search`` in the
    record when there were any).

    Never raises for a stage's failure: the record then has status ``failed`` and the reason
    ``Type: message``, so one bad series cannot block a queue or a folder.
    """
    start = time.perf_counter()
    try:
        analysis = analyse(paths, ctx)
        encode_start = time.perf_counter()
        if isinstance(analysis, NotAnalysed):
            objects = encode_not_analysed(analysis, paths, out_dir, version=version)
            record = not_analysed_record(series_uid, analysis)
            record["timings_s"]["encode"] = round(time.perf_counter() - encode_start, 3)
            record["timings_s"]["total"] = round(time.perf_counter() - start, 3)
            log.warning("series not analysed: %s", analysis.reason)
            write_outputs(out_dir, record, None)
            return SeriesRun(record, tuple(objects))
        followup: Followup | None = None
        compare_s = 0.0
        if priors:
            followup = compare_with_priors(
                series_uid, analysis.volume, analysis.labels, analysis.prediction, acquired,
                priors, ctx.settings, key_slice=analysis.measurements.largest_area_slice)
            compare_s = round(time.perf_counter() - encode_start, 3)
            encode_start = time.perf_counter()
        objects = encode_outputs(analysis, paths, out_dir, version=version,
                                 compared=followup.baseline if followup else None)
        record = result_record(series_uid, analysis=analysis)
        record_comparisons(record, followup)
        if prior_searched:
            record["prior_search"] = list(prior_searched)
        if priors:
            record["timings_s"]["compare"] = compare_s
        record["timings_s"]["encode"] = round(time.perf_counter() - encode_start, 3)
        record["timings_s"]["total"] = round(time.perf_counter() - start, 3)
        write_outputs(out_dir, record, analysis)
        comparisons = tuple(followup.comparisons) if followup else ()
        return SeriesRun(record, tuple(objects), analysis.prediction, comparisons)
    except Exception as exc:  # noqa: BLE001 - the one place that records a series' failure
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, DicomnodeError | OSError | ValueError | MemoryError):
            log.exception("unexpected error in series")
        log.error("series failed: %s", error)
        record = result_record(series_uid, status="failed", reason=error,
                               timings_s={"total": round(time.perf_counter() - start, 3)})
        with contextlib.suppress(OSError):  # the job records the failure even if the disk cannot
            write_outputs(out_dir, record, None)
        return SeriesRun(record)


def process_series(ref: SeriesRef, ctx: Context, sessions: SessionFactory) -> dict[str, Any]:
    """Run one claimed job and record it: failed with ``Type: message``, or done with its
    outputs queued for every destination in the same transaction."""
    root = ctx.settings.storage.path
    out_dir = results_dir(root, ref.series_instance_uid, ref.version)
    with log_context(series_uid=ref.series_instance_uid, job_id=ref.job_id):
        acquired, priors, waiting = serve_priors(ref, ctx.settings, sessions)
        if not priors and not waiting:  # none in the node: the PACS's ([followup] query_pacs)
            waiting = pacs_prior_wait(ref, ctx.settings, sessions)
        if waiting:  # a follow-up waits for its prior's analysis (claimed again after wait_s)
            log.info("follow-up deferred: prior %s is still being analysed", waiting[0])
            defer(sessions, ref.job_id, ref.lease_token, ctx.settings.followup.wait_s)
            return result_record(ref.series_instance_uid, status="deferred",
                                 reason=f"waiting for prior {waiting[0]}")
        searched = prior_search(sessions, ref.job_id) if ctx.settings.query_peer() else []
        run = run_series(ref.instance_paths, ref.series_instance_uid, ctx, out_dir,
                         version=ref.version, acquired=acquired, priors=priors,
                         prior_searched=searched)
        record = run.record
        if run.failed:
            finish(sessions, ref.job_id, error=record["reason"], timings_s=record["timings_s"],
                   token=ref.lease_token)
            return record
        items = [{"kind": o.kind, "path": o.path.relative_to(root).as_posix(),
                  "sop_class_uid": o.sop_class_uid, "sop_instance_uid": o.sop_instance_uid}
                 for o in run.objects]

        def also(session: Session) -> None:  # in the job's transaction
            enqueue_in(session, ref.job_id, items, ctx.settings.destinations)
            record_analysis(session, ref.series_instance_uid, ref.version, run.prediction,
                            run.comparisons)

        finish(sessions, ref.job_id, timings_s=record["timings_s"],
               outputs={"dir": out_dir.relative_to(root).as_posix(), "items": items,
                        "qa_status": record["qa"]["status"]},
               not_analysed=record["reason"] if run.not_analysed else "",
               also=also, token=ref.lease_token)
        if run.not_analysed:
            log.warning("job not analysed: %s", record["reason"])
            return record
        log.info("job done: ICH %.1f mL, IVH %.1f mL (%s)", record["ich_volume_ml"],
                 record["ivh_volume_ml"], record["backend"])
        return record


@dataclass
class FoundSeries:
    """One series found in a folder by ``process_folder``."""

    paths: list[Path] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    geometries: list[dict[str, Any]] = field(default_factory=list)


def scan_folder(input_dir: Path) -> tuple[dict[str, FoundSeries], int]:
    """Group readable CT files by SeriesInstanceUID (not by folder); also the number skipped."""
    series: dict[str, FoundSeries] = {}
    skipped = 0
    for path in sorted(p for p in Path(input_dir).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        except (InvalidDicomError, InstanceRejected, OSError, ValueError, AttributeError):
            skipped += 1
            continue
        if str(ds.get("SOPClassUID", "")) not in STORED_CLASSES:
            skipped += 1
            continue
        attrs, geometry = read_header(ds)
        found = series.setdefault(uid, FoundSeries(attributes=attrs))
        found.paths.append(path)
        found.geometries.append(geometry)
    return series, skipped


def process_folder(input_dir: Path, out_dir: Path, settings: Settings,
                   report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """``dicomnode run``: every series in ``input_dir`` -> ``out_dir/<SeriesInstanceUID>/``.

    The node's eligibility rules apply; the models are loaded once, and only when a series is
    eligible.
    """
    series, skipped = scan_folder(input_dir)
    log.info("%d series found, %d files skipped (not DICOM or not CT)", len(series), skipped)
    ctx: Context | None = None
    records = []
    keys = {uid: ScanKey(uid, patient_key(f.attributes), scan_datetime(f.attributes))
            for uid, f in series.items()}
    done: list[ScanKey] = []  # analysed scans, the priors of later ones
    for key in in_order(list(keys.values())):
        uid, found = key.series_instance_uid, series[key.series_instance_uid]
        reason = evaluate(found.attributes, series_geometry(found.geometries), len(found.paths),
                          settings.eligibility)
        with log_context(series_uid=uid):
            if reason:
                record = result_record(uid, status="rejected", reason=reason)
                write_outputs(out_dir / uid, record, None)
            else:
                try:
                    ctx = ctx or make_context(settings)
                except DicomnodeError as exc:  # e.g. a model that cannot load: every series says so
                    record = result_record(uid, status="failed", reason=f"{type(exc).__name__}: {exc}")
                    write_outputs(out_dir / uid, record, None)
                else:
                    priors = [Prior(p.series_instance_uid, p.acquired, out_dir / p.series_instance_uid,
                                    tuple(series[p.series_instance_uid].paths))
                              for p in folder_priors(key, done, settings) if p.acquired]
                    record = run_series(found.paths, uid, ctx, out_dir / uid, acquired=key.acquired,
                                        priors=priors).record
                    if record["status"] == "done":
                        done.append(key)
        records.append(record)
        if report is not None:
            report(record)
    return records


_SOURCE_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def source_datasets(paths: Sequence[Path], volume: CTVolume) -> list[Dataset]:
    """The source instances in the volume's slice order (each multi-frame instance once)."""
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


def encode_outputs(analysis: Analysis, paths: Sequence[Path], out_dir: Path, *,
                   version: int, compared: ComparedPrior | None = None) -> list[EncodedObject]:
    """SEG, TID 1500 SR and overlay images (plus PNG previews) written durably to ``out_dir``;
    for a follow-up (``compared``: its baseline) the comparison in the SR and its key image
    (kind ``overlay``, ``comparison.dcm``)."""
    sources = source_datasets(paths, analysis.volume)
    volume, labels, m, prediction = (analysis.volume, analysis.labels, analysis.measurements,
                                     analysis.prediction)
    warnings = qa_warnings(analysis.qa)
    seg = build_seg(sources, volume, labels, version=version, software_version=__version__)
    sr = build_sr(sources, seg, m, labels, version=version, prediction=prediction,
                  software_version=__version__, warnings=warnings)
    if compared is not None:
        add_comparison(sr, compared, seg, version=version)
    overlays = build_overlays(sources, volume, labels, m, version=version, prediction=prediction,
                              warnings=warnings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overlay").mkdir(exist_ok=True)
    planned = [("seg", seg, out_dir / "seg.dcm"), ("sr", sr, out_dir / "sr.dcm")] + [
        ("overlay", ds, out_dir / "overlay" / f"{i:04d}.dcm") for i, ds in enumerate(overlays)]
    key_image = None
    if compared is not None and compared.plane is not None:
        key_image = build_comparison_image(sources, volume, labels, compared, version=version,
                                           warnings=warnings)
        planned.append(("overlay", key_image, out_dir / "comparison.dcm"))
    objects = []
    for kind, ds, path in planned:
        write_dataset_durably(ds, path)
        objects.append(EncodedObject(kind=kind, path=path, sop_class_uid=str(ds.SOPClassUID),
                                     sop_instance_uid=str(ds.SOPInstanceUID)))
    for folder in {out_dir, out_dir / "overlay"}:
        fsync_path(folder)
    write_previews(out_dir / "previews", volume, labels, m, prediction=prediction,
                   warnings=warnings)
    if key_image is not None:
        write_png(out_dir / "previews" / "comparison.png", key_image.pixel_array)
    return objects


def qa_warnings(qa: QAReport) -> list[str]:
    """The QA warnings as the SR, the overlays and the summary image show them."""
    return [f"QA WARNING: {reason}" for reason in qa.reasons("warn")]


def encode_not_analysed(result: NotAnalysed, paths: Sequence[Path], out_dir: Path, *,
                        version: int) -> list[EncodedObject]:
    """The "not analysed" key image and SR (no SEG, no risks), written durably to ``out_dir``."""
    sources = source_datasets(paths, result.volume)
    image = build_not_analysed_image(sources, result.volume, result.qa, version=version,
                                     software_version=__version__)
    sr = build_not_analysed_sr(sources, result.qa, version=version, software_version=__version__)
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    # The kinds a destination's ``outputs`` names: a PACS that takes SRs (overlays) gets the
    # not-analysed SR (key image); kinds of their own were never queued for delivery.
    for kind, ds, path in (("overlay", image, out_dir / "not-analysed.dcm"),
                           ("sr", sr, out_dir / "sr.dcm")):
        write_dataset_durably(ds, path)
        objects.append(EncodedObject(kind=kind, path=path, sop_class_uid=str(ds.SOPClassUID),
                                     sop_instance_uid=str(ds.SOPInstanceUID)))
    fsync_path(out_dir)
    return objects


def not_analysed_record(series_instance_uid: str, result: NotAnalysed) -> dict[str, Any]:
    """``result.json`` of a series QA refused: status ``not_analysed``, no volumes."""
    record = result_record(series_instance_uid, status="not_analysed", reason=result.reason,
                           timings_s=result.timings_s)
    record["qa"] = result.qa.as_record()
    record["warnings"] = list(result.volume.warnings) + result.qa.reasons("warn")
    return record


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
        **prediction_record(None), "qa": {"status": "not_checked", "checks": []},
        "comparison": None, "comparisons": [],  # follow-ups only (add_comparisons)
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
        record.update(prediction_record(analysis.prediction))
        if analysis.prediction is not None:
            record["warnings"] += list(analysis.prediction.warnings)
        record["qa"] = (analysis.qa.as_record() if analysis.qa.checks
                        else {"status": "not_checked", "checks": []})
        record["warnings"] += analysis.qa.reasons("warn")
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
