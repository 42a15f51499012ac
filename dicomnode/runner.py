"""``dicomnode run INPUT_DIR --out OUT_DIR``: the pipeline on files, without the network.

Searches INPUT_DIR recursively, skips files that are not DICOM, groups instances by
SeriesInstanceUID (not by folder), applies the node's eligibility rules and writes
``OUT_DIR/<SeriesInstanceUID>/result.json`` (and ``labels.nii.gz``) for every series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.assemble.geometry import series_geometry
from dicomnode.assemble.selection import evaluate
from dicomnode.config import Settings
from dicomnode.errors import DicomnodeError, InstanceRejected
from dicomnode.pipeline import Context, analyse, encode_outputs, result_record, write_outputs
from dicomnode.receive.header import STORED_CLASSES, check_uid, read_header

log = logging.getLogger(__name__)


@dataclass
class Found:
    """One series found on disk."""

    paths: list[Path] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    geometries: list[dict[str, Any]] = field(default_factory=list)


def scan(input_dir: Path) -> tuple[dict[str, Found], int]:
    """Group readable CT files by series; returns (series, number of files skipped)."""
    series: dict[str, Found] = {}
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
        found = series.setdefault(uid, Found(attributes=attrs))
        found.paths.append(path)
        found.geometries.append(geometry)
    return series, skipped


def run(input_dir: Path, out_dir: Path, settings: Settings,
        make_context: Callable[[Settings], Context],
        report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Process every series found; the model is loaded once, only if a series is eligible."""
    series, skipped = scan(input_dir)
    log.info("%d series found, %d files skipped (not DICOM or not CT)", len(series), skipped)
    ctx: Context | None = None
    records = []
    for uid, found in sorted(series.items()):
        geometry = series_geometry(found.geometries)
        reason = evaluate(found.attributes, geometry, len(found.paths), settings.eligibility)
        analysis = None
        if reason:
            record = result_record(uid, status="rejected", reason=reason)
        else:
            try:
                ctx = ctx or make_context(settings)
                analysis = analyse(found.paths, ctx)
                record = result_record(uid, analysis=analysis)
                encode_outputs(analysis, found.paths, out_dir / uid, version=1)
            except Exception as exc:  # noqa: BLE001 - one series' failure is recorded, not fatal
                if not isinstance(exc, DicomnodeError | OSError | ValueError | MemoryError):
                    log.exception("unexpected error in series %s", uid)
                record = result_record(uid, status="failed",
                                       reason=f"{type(exc).__name__}: {exc}")
        write_outputs(out_dir / uid, record, analysis)
        records.append(record)
        if report is not None:
            report(record)
    return records
