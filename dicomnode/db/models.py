"""Database schema (SQLAlchemy 2.0 typed models).

Studies contain series, series contain instances; a job is one processing run of one version of
a series. Enough state is kept to resume after a crash: instance rows are committed before a
C-STORE is acknowledged (marked pending until their file is known durable), series states move
forward in single transactions, and jobs and outbox items are claimed with leases (a token and an
expiry, :mod:`dicomnode.jobs.leases`): a lease that expires (its holder died) is taken over, and a
node that restarts releases its own at once.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Naive UTC: stored the same way by SQLite and PostgreSQL, so comparisons never mix kinds."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime()}


class SeriesState(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    REJECTED = "rejected"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    NOT_ANALYSED = "not_analysed"  # refused by QA (docs/qa.md): a result of its own, not a fault


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    NOT_ANALYSED = "not_analysed"  # refused by QA (docs/qa.md): a result of its own, not a fault


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    # Patient identifiers stay in the database (needed to route results); never logged above DEBUG.
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    # Incremented when instances arrive after completion: the amended result is a new version.
    version: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    # Header attributes of the first instance, used by the eligibility rules.
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Geometry recorded at completion (slice order, spacing statistics, tilt, gaps).
    geometry: Mapped[dict[str, Any]] = mapped_column(default=dict)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    # Relative to the storage root: <StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    # Per-slice geometry, read from the header at receive time (cheap) for assembly.
    geometry: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    series_version: Mapped[int] = mapped_column(Integer, default=1)
    series: Mapped[Series] = relationship(back_populates="instances")


class PendingInstance(Base):
    """An instance row committed while its file's fsync may still be running.

    The receiver commits the row and fsyncs the file and its folder at the same time, and
    acknowledges when all three are done (receive/recorder.py); the mark is deleted in a later
    transaction. Start-up reconciliation checks the file of every mark left by a crash against
    the row's size and SHA-256, and removes the instance (never acknowledged) when it differs.
    """

    __tablename__ = "pending_instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The node whose receiver wrote it: a node's start-up checks only its own marks, never the
    # in-flight ones of a live peer sharing the database and the storage folder.
    node: Mapped[str] = mapped_column(String(128), default="", index=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str] = mapped_column(Text, default="")
    timings_s: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the job produced: {"dir": ..., "items": [{kind, path, sop_class_uid, sop_instance_uid}]}
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # The claim: only the holder of this token may renew it or record the result.
    lease_token: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class DiscardedClass(Base):
    """Count of acknowledged instances of classes we do not process (dose reports, ...)."""

    __tablename__ = "discarded_classes"

    sop_class_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReceiveError(Base):
    """An instance refused with a failure status, and why."""

    __tablename__ = "receive_errors"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    sop_instance_uid: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)


class AssociationEvent(Base):
    """Rejected associations (access control), for radiology IT."""

    __tablename__ = "association_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    called_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")


class AssociationCount(Base):
    """Associations by result, per node: one counter row each, incremented in place.

    Accepted (and aborted) associations are only counted, not recorded one by one as the
    rejected ones are (``association_events``): the receiver's recorder adds them to its next
    transaction (receive/recorder.py), so counting costs no transaction of its own.
    """

    __tablename__ = "association_counts"

    node: Mapped[str] = mapped_column(String(128), primary_key=True)
    result: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # permanent: not retried


class OutboxItem(Base):
    """One output object for one destination: written to disk first, then sent until acked."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # seg, sr, overlay
    destination: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the storage root
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    # The sender that claimed it (node name), its token and when the claim lapses.
    claimed_by: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_token: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class NodeRun(Base):
    """One node (by name) of the cluster and its current run, for ``status`` and start-up."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # serve, worker
    run_token: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[str] = mapped_column(String(32), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who did what in the web console, and when (never patient identifiers)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))  # login, login_failed, resend, reprocess, ...
    target: Mapped[str] = mapped_column(String(128), default="")  # "job 12", "destination pacs"
    detail: Mapped[str] = mapped_column(Text, default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")


class DestinationPause(Base):
    """A destination whose deliveries are paused from the console (no row: delivering)."""

    __tablename__ = "destination_pauses"

    destination: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused_at: Mapped[datetime] = mapped_column(default=utcnow)
    paused_by: Mapped[str] = mapped_column(String(64), default="")


class PriorRetrieval(Base):
    """One query or retrieval made to a PACS for a follow-up's prior (docs/followup.md):
    C-FIND of studies, C-FIND of series, C-MOVE, with its outcome and counts."""

    __tablename__ = "prior_retrievals"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)  # the follow-up's
    operation: Mapped[str] = mapped_column(String(16))  # find_studies, find_series, move
    peer: Mapped[str] = mapped_column(String(128))  # AET@HOST:PORT
    outcome: Mapped[str] = mapped_column(String(16))  # found, none, retrieved, partial, ...
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)
    matches: Mapped[int] = mapped_column(Integer, default=0)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    # The series chosen (find_series) and moved (move): a series fetched as a prior is looked
    # up by it, and never looks for a prior of its own.
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    warning: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")


class SeriesPrediction(Base):
    """The features an analysed series was scored on and each model's risk (one row per series;
    a later version replaces it): the learning loop's inputs (docs/prediction.md)."""

    __tablename__ = "series_predictions"

    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    he_probability: Mapped[float | None] = mapped_column(Float, default=None)
    he_model: Mapped[str] = mapped_column(String(128), default="")
    he_model_version: Mapped[str] = mapped_column(String(64), default="")
    pse_probability: Mapped[float | None] = mapped_column(Float, default=None)
    pse_model: Mapped[str] = mapped_column(String(128), default="")
    pse_model_version: Mapped[str] = mapped_column(String(64), default="")
    # {feature name: value, null where unknown} (names: docs/prediction.md "Features").
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExpansionOutcome(Base):
    """A baseline's haematoma expansion as one follow-up measured it: one row per comparison,
    with the baseline's predicted risk and its model as they were when the follow-up came."""

    __tablename__ = "expansion_outcomes"
    __table_args__ = (UniqueConstraint("baseline_series_id", "followup_series_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    baseline_series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    followup_series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    interval_h: Mapped[float | None] = mapped_column(Float, default=None)
    baseline_ich_volume_ml: Mapped[float] = mapped_column(Float)
    followup_ich_volume_ml: Mapped[float] = mapped_column(Float)
    ich_change_ml: Mapped[float] = mapped_column(Float)
    ich_change_pct: Mapped[float | None] = mapped_column(Float, default=None)
    new_ivh: Mapped[bool] = mapped_column(Boolean)
    expansion: Mapped[bool] = mapped_column(Boolean)
    definition: Mapped[str] = mapped_column(Text)  # e.g. "growth > 6 mL or > 33 %"
    registration_trusted: Mapped[bool] = mapped_column(Boolean)
    he_probability: Mapped[float | None] = mapped_column(Float, default=None)
    he_model: Mapped[str] = mapped_column(String(128), default="")
    he_model_version: Mapped[str] = mapped_column(String(64), default="")
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClinicalOutcome(Base):
    """A clinical outcome of a study imported by the department (`dicomnode outcomes import`):
    e.g. ``pse`` (a seizure within one year), keyed by accession number or Study Instance UID."""

    __tablename__ = "clinical_outcomes"
    __table_args__ = (UniqueConstraint("key_kind", "key", "outcome"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_kind: Mapped[str] = mapped_column(String(24))  # accession_number, study_instance_uid
    key: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    value: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(Text, default="")  # file name and row number
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
