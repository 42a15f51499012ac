"""What the console's pages show, read from the database (read-only sessions).

States are read generically (grouped by their stored value), so states added later show up
without changes here. Patient identifiers are included only when the settings allow it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from dicomnode.config import Settings
from dicomnode.db.models import (
    AuditEntry,
    DestinationPause,
    Job,
    OutboxItem,
    Series,
    Study,
    utcnow,
)
from dicomnode.db.session import SessionFactory
from dicomnode.jobs.leases import live_nodes as alive

_IDENTIFIER_ATTRIBUTES = ("patient_name", "patient_id", "patient_birth_date", "accession_number")


@dataclass(frozen=True)
class ModelInfo:
    role: str
    name: str
    version: str
    key: str  # for /models/<key>: the model card
    card: Path | None


def models(settings: Settings) -> list[ModelInfo]:
    """The segmentation model and prediction bundles in use, from their ``model.json``."""
    seg = settings.segmentation
    folders: list[tuple[str, Path | None]] = [
        ("segmentation", {"unet": seg.unet_model, "blast_ct": seg.blast_ct_model,
                          "nnunet": seg.nnunet_model}.get(seg.backend))]
    if settings.prediction.enabled:
        folders += [("haematoma expansion", settings.prediction.he_model),
                    ("post-stroke epilepsy", settings.prediction.pse_model)]
    out = []
    for i, (role, folder) in enumerate(folders):
        name, version, card = seg.backend if i == 0 else "", "", None
        if folder is not None:
            name = folder.name
            try:
                meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
                name, version = str(meta.get("name", name)), str(meta.get("version", ""))
            except (OSError, ValueError):
                pass
            card = folder / "MODEL_CARD.md" if (folder / "MODEL_CARD.md").is_file() else None
        out.append(ModelInfo(role, name, version, str(i), card))
    return out


def free_disk_bytes(settings: Settings) -> int:
    return int(shutil.disk_usage(settings.storage.path).free)


def overview(sessions: SessionFactory, settings: Settings) -> dict[str, Any]:
    """The figures of the overview page."""
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    with sessions() as session:
        series: dict[str, int] = {k: v for k, v in session.execute(
            select(Series.state, func.count()).group_by(Series.state))}
        jobs: dict[str, int] = {k: v for k, v in session.execute(
            select(Job.state, func.count()).group_by(Job.state))}
        today: dict[str, int] = {k: v for k, v in session.execute(
            select(Job.state, func.count()).where(Job.finished_at >= midnight)
            .group_by(Job.state))}
        outbox = session.execute(select(OutboxItem.destination, OutboxItem.state, func.count())
                                 .group_by(OutboxItem.destination, OutboxItem.state)).all()
    deliveries: dict[str, dict[str, int]] = {d.name: {} for d in settings.destinations}
    for dest, state, n in outbox:
        deliveries.setdefault(dest, {})[state] = n
    workers = alive(sessions, "worker", settings.web.worker_stale_s)
    return {"series": series, "jobs": jobs, "today": today, "deliveries": deliveries,
            "receiving": series.get("receiving", 0), "queue_depth": jobs.get("queued", 0),
            "processing": jobs.get("processing", 0), "free_disk_bytes": free_disk_bytes(settings),
            "workers": [w.name for w in workers], "models": models(settings)}


def series_list(sessions: SessionFactory, *, day: str = "", state: str = "", reason: str = "",
                show_identifiers: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """Series, newest first, filtered by day (YYYY-MM-DD of last receipt), state and reason."""
    query = (select(Series, Study).join(Study, Series.study_id == Study.id)
             .order_by(Series.last_received_at.desc(), Series.id.desc()).limit(limit))
    if day:
        start = datetime.fromisoformat(day)
        query = query.where(Series.last_received_at >= start,
                            Series.last_received_at < start + timedelta(days=1))
    if state:
        query = query.where(Series.state == state)
    if reason:
        query = query.where(Series.reason.contains(reason))
    with sessions() as session:
        rows = session.execute(query).all()
        jobs = {(j.series_id, j.version): j.id for j in session.scalars(
            select(Job).where(Job.series_id.in_([s.id for s, _ in rows])))}
    out = []
    for s, study in rows:
        g = s.geometry or {}
        row = {"id": s.id, "uid": s.series_instance_uid, "state": s.state, "reason": s.reason,
               "version": s.version, "instances": s.instance_count,
               "description": s.attributes.get("series_description", ""),
               "received": s.last_received_at, "tilt_deg": g.get("tilt_deg"),
               "spacing_mm": g.get("spacing_mm"), "job_id": jobs.get((s.id, s.version))}
        if show_identifiers:
            row["patient_id"] = study.patient_id or ""
            row["accession_number"] = study.accession_number or ""
            row["patient_name"] = s.attributes.get("patient_name", "")
        out.append(row)
    return out


def series_states(sessions: SessionFactory) -> list[str]:
    with sessions() as session:
        return sorted(session.scalars(select(Series.state).distinct()))


def job_detail(sessions: SessionFactory, settings: Settings, job_id: int, *,
               show_identifiers: bool = False) -> dict[str, Any] | None:
    """A job, its series, its result record, its outputs and every delivery row."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        series = session.get_one(Series, job.series_id)
        study = session.get_one(Study, series.study_id)
        deliveries = list(session.scalars(select(OutboxItem).where(OutboxItem.job_id == job_id)
                                          .order_by(OutboxItem.destination, OutboxItem.id)))
    out_dir = settings.storage.path / job.outputs["dir"] if job.outputs.get("dir") else None
    record: dict[str, Any] = {}
    previews: list[str] = []
    if out_dir is not None:
        try:
            record = json.loads((out_dir / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        if (out_dir / "previews").is_dir():
            previews = sorted(p.name for p in (out_dir / "previews").glob("*.png"))
    for key in _IDENTIFIER_ATTRIBUTES:
        if not show_identifiers:
            record.pop(key, None)
    identifiers = ({"patient_id": study.patient_id or "",
                    "accession_number": study.accession_number or ""}
                   if show_identifiers else {})
    return {"job": job, "series": series, "study_uid": study.study_instance_uid,
            "record": record, "previews": previews, "deliveries": deliveries,
            "identifiers": identifiers, "qa_status": getattr(job, "qa_status", None)}


def preview_path(sessions: SessionFactory, settings: Settings, job_id: int,
                 name: str) -> Path | None:
    """The PNG preview ``name`` of a job, or None (only names the job's folder holds)."""
    with sessions() as session:
        job = session.get(Job, job_id)
        folder = job.outputs.get("dir") if job is not None else None
    if not folder:
        return None
    previews = settings.storage.path / folder / "previews"
    if not previews.is_dir():
        return None
    return next((p for p in previews.glob("*.png") if p.name == name), None)


def destinations(sessions: SessionFactory, settings: Settings) -> list[dict[str, Any]]:
    """Each destination: paused or delivering, counts, last error and next retry."""
    with sessions() as session:
        paused = {p.destination: p for p in session.scalars(select(DestinationPause))}
        counts = session.execute(select(OutboxItem.destination, OutboxItem.state, func.count())
                                 .group_by(OutboxItem.destination, OutboxItem.state)).all()
        out = []
        for d in settings.destinations:
            last = session.scalar(select(OutboxItem).where(
                OutboxItem.destination == d.name, OutboxItem.last_error != "")
                .order_by(OutboxItem.id.desc()).limit(1))
            next_retry = session.scalar(select(func.min(OutboxItem.next_attempt_at)).where(
                OutboxItem.destination == d.name, OutboxItem.state == "pending"))
            out.append({"name": d.name, "peer": f"{d.ae_title}@{d.host}:{d.port}",
                        "paused": paused.get(d.name), "last_error": last.last_error if last else "",
                        "next_retry": next_retry,
                        "counts": {s: n for dest, s, n in counts if dest == d.name}})
    return out


def audit(sessions: SessionFactory, *, limit: int = 500) -> list[AuditEntry]:
    with sessions() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc())
                                    .limit(limit)))


def alive_workers(sessions: SessionFactory, settings: Settings) -> list[str]:
    return [w.name for w in alive(sessions, "worker", settings.web.worker_stale_s)]
