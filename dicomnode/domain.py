"""Small frozen types passed between stages (the contracts of docs/architecture.md).

Label values are the same in every stage and backend (see ``LABELS``); a backend with other
values maps them on the way out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

# Canonical label values of every label map dicomnode produces.
BACKGROUND, ICH, IVH, OEDEMA, EXTRA_AXIAL = 0, 1, 2, 3, 4
LABELS: Mapping[int, str] = {ICH: "ICH", IVH: "IVH", OEDEMA: "oedema", EXTRA_AXIAL: "extra-axial"}


@dataclass(frozen=True)
class SeriesRef:
    """A claimed job: which version of which series, and where its instances are on disk."""

    job_id: int
    series_instance_uid: str
    study_instance_uid: str
    version: int
    instance_paths: tuple[Path, ...]
    # The claim's lease token: only its holder may record the result (None: not claimed).
    lease_token: str | None = None


@dataclass(frozen=True)
class SourceSlice:
    """One source image plane: the instance (and frame, for multi-frame) it came from."""

    sop_instance_uid: str
    sop_class_uid: str
    position_mm: tuple[float, float, float]  # Image Position (Patient), LPS
    frame_number: int | None = None  # 1-based, multi-frame instances only


@dataclass(frozen=True)
class CTVolume:
    """A CT series as a volume in HU.

    ``image`` is a float32 SimpleITK image on a regular grid (LPS, mm). When the source is
    tilted or unevenly spaced it was resampled (``resampled`` is True) and the source planes
    are in ``slices`` (sorted along the slice normal), so results can go back to them.
    """

    series_instance_uid: str
    study_instance_uid: str
    image: sitk.Image
    slices: tuple[SourceSlice, ...]
    orientation: tuple[float, float, float, float, float, float]  # source row, column cosines
    pixel_spacing_mm: tuple[float, float]  # source (row spacing, column spacing)
    rows: int
    columns: int
    resampled: bool = False
    warnings: tuple[str, ...] = ()
    header: Mapping[str, Any] = field(default_factory=dict)  # age, sex, accession, ...

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing of ``image`` (x, y, z)."""
        return tuple(self.image.GetSpacing())


@dataclass(frozen=True)
class LabelMap:
    """Labels (uint8 SimpleITK image, canonical values) on the grid of ``CTVolume.image``."""

    image: sitk.Image
    backend: str
    model: str
    model_version: str
    labels: Mapping[int, str] = field(default_factory=lambda: dict(LABELS))
    synthetic_training: bool = False  # the model was fit on synthetic data only


@dataclass(frozen=True)
class Measurements:
    """Quantities measured from a label map and its volume (see dicomnode.measure)."""

    ich_volume_ml: float
    ivh_volume_ml: float
    abc2_volume_ml: float
    largest_area_slice: int | None  # index into CTVolume.image z, None without ICH
    cortical_involvement: bool
    site: str  # "lobar", "deep", "infratentorial" or "none"
    markers: Mapping[str, Any] = field(default_factory=dict)
    extra_axial_volume_ml: float = 0.0
    oedema_volume_ml: float = 0.0


@dataclass(frozen=True)
class Risk:
    """One trained model's probability of one outcome (haematoma expansion or epilepsy)."""

    probability: float  # 0..1
    model: str
    model_version: str
    synthetic_training: bool  # the model was fit on synthetic data only

    def __post_init__(self) -> None:
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"prediction probability must be a number in [0, 1], got {p!r}")
        if not self.model:
            raise ValueError("prediction needs the model's name")


CAVE_MODEL = "CAVE (Haapaniemi 2014)"


@dataclass(frozen=True)
class CaveScore:
    """The published CAVE score (0..4) for late seizures; ``partial`` when a component is unknown."""

    score: int
    partial: bool
    risk: tuple[float, float]  # published risk range over the scores still possible
    components: Mapping[str, bool | None] = field(default_factory=dict)
    model: str = CAVE_MODEL
    model_version: str = "published"

    def __post_init__(self) -> None:
        if isinstance(self.score, bool) or not isinstance(self.score, int) or not 0 <= self.score <= 4:
            raise ValueError(f"prediction CAVE score must be an integer 0..4, got {self.score!r}")


@dataclass(frozen=True)
class Prediction:
    """What the predict stage adds to a series: the CAVE score and the trained models' risks."""

    cave: CaveScore | None = None
    expansion: Risk | None = None  # haematoma expansion (HE)
    epilepsy: Risk | None = None  # post-stroke epilepsy (PSE)
    warnings: tuple[str, ...] = ()
    # The feature dict the models scored (names as in docs/prediction.md "Features"; NaN where
    # unknown): recorded with the series (docs/prediction.md, learning loop).
    features: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedObject:
    """One DICOM object the encode stage wrote (SEG, SR or overlay image)."""

    kind: str  # "seg", "sr" or "overlay"
    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Registration:
    """A rigid follow-up -> baseline registration: final metric and whether it is trusted."""

    metric_value: float | None  # final Mattes mutual information (lower is better); None: failed
    correlation: float  # brain HU correlation after registration (what ``trusted`` rests on)
    trusted: bool
    iterations: int = 0
    message: str = ""  # why it is not trusted
    parameters: tuple[float, ...] = ()  # Euler3D: rotation (rad) x, y, z, translation (mm)


@dataclass(frozen=True)
class FollowupScan:
    """One analysed scan as ``compare`` needs it (the prior is read back from its results)."""

    series_instance_uid: str
    acquired: datetime | None
    image: sitk.Image  # CT in HU
    labels: sitk.Image  # canonical label values, on the grid of ``image``
    he_probability: float | None = None  # the expansion risk predicted on this scan


@dataclass(frozen=True)
class Comparison:
    """A follow-up against one earlier scan of the patient (volumes from each scan's labels)."""

    prior_series_instance_uid: str
    prior_study_datetime: str  # ISO 8601, "" when unknown
    interval_h: float | None
    prior_ich_volume_ml: float
    ich_volume_ml: float
    ich_change_ml: float
    ich_change_pct: float | None  # None when the prior had no ICH
    prior_ivh_volume_ml: float
    ivh_volume_ml: float
    ivh_change_ml: float
    prior_oedema_volume_ml: float
    oedema_volume_ml: float
    oedema_change_ml: float
    new_ivh: bool
    expansion: bool
    definition: str
    registration: Registration
    prior_he_probability: float | None = None

    def as_record(self) -> dict[str, Any]:
        """``result.json``'s ``comparison`` (and each of ``comparisons``)."""
        record = asdict(self)
        record["registration"] = asdict(self.registration)
        return record


@dataclass(frozen=True)
class PacsOperation:
    """One query or retrieval the node made to a PACS for a follow-up's prior (``query``).

    ``operation``: ``find_studies``, ``find_series`` or ``move``. ``outcome``: ``found`` or
    ``none`` (a C-FIND), ``retrieved``, ``partial`` or ``cancelled`` (a C-MOVE), ``failed`` (no
    association or a failure status; ``detail`` says why).
    """

    operation: str
    peer: str  # AET@HOST:PORT
    outcome: str
    started_at: datetime  # naive UTC, like the database's times
    finished_at: datetime
    matches: int = 0  # C-FIND: matches read; C-MOVE: instances announced by the PACS
    study_instance_uid: str = ""  # the study chosen (or searched, for find_series and move)
    series_instance_uid: str = ""  # the series chosen and moved
    completed: int = 0  # C-MOVE sub-operations (PS3.4 C.4.2.1.4)
    failed: int = 0
    warning: int = 0
    detail: str = ""  # why nothing was chosen, or the error


@dataclass(frozen=True)
class PriorPlane:
    """The prior's CT and labels on one plane of the follow-up's grid, for the comparison image.

    ``z`` is the follow-up's slice (index into its image) the prior was resampled onto with the
    inverse of the registration. When the registration failed (``registered`` False) the planes
    are the prior's own key slice, not aligned with the follow-up's.
    """

    z: int
    hu: np.ndarray  # (rows, columns) float32 HU
    labels: np.ndarray  # (rows, columns) uint8, canonical values
    spacing_mm: tuple[float, float]  # (row, column) spacing of ``hu``
    registered: bool

    def __post_init__(self) -> None:
        if self.hu.ndim != 2 or self.hu.shape != self.labels.shape:
            raise ValueError(f"prior plane: hu {self.hu.shape} and labels {self.labels.shape} "
                             "must be the same 2-D shape")


@dataclass(frozen=True)
class SegmentationRef:
    """A stored SEG (the prior's), as the follow-up's SR references it.

    ``segments`` maps a canonical label value to (Segment Number, Tracking UID or "").
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_series_instance_uid: str  # the CT series it segments
    segments: Mapping[int, tuple[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ComparedPrior:
    """A comparison with what encode needs to show it: the prior on the follow-up's key plane,
    the risk predicted on the prior and the prior's SEG (each None when unavailable)."""

    comparison: Comparison
    plane: PriorPlane | None = None
    he_risk: Risk | None = None
    segmentation: SegmentationRef | None = None


QA_OUTCOMES = ("pass", "warn", "fail")


@dataclass(frozen=True)
class QACheck:
    """One quality check of a series: what was measured, the limit, and what it means.

    ``value`` and ``limit`` are numbers or short text (a range is ``"20..45"``); ``None`` when a
    check could not be measured (then the outcome is ``pass`` and the message says why).
    """

    name: str
    value: float | str | None
    limit: str
    outcome: str  # "pass", "warn" or "fail"
    message: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in QA_OUTCOMES:
            raise ValueError(f"QA outcome must be one of {QA_OUTCOMES}, got {self.outcome!r}")
        if not self.name:
            raise ValueError("a QA check needs a name")


@dataclass(frozen=True)
class QAReport:
    """The checks of one series, in the order they ran; ``status`` is the worst outcome."""

    checks: tuple[QACheck, ...] = ()

    @property
    def status(self) -> str:
        outcomes = {c.outcome for c in self.checks}
        return "fail" if "fail" in outcomes else "warn" if "warn" in outcomes else "pass"

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def reasons(self, outcome: str) -> list[str]:
        """The messages of the checks with ``outcome``, in order."""
        return [c.message or c.name for c in self.checks if c.outcome == outcome]

    def extend(self, more: QAReport) -> QAReport:
        return QAReport(self.checks + more.checks)

    def as_record(self) -> dict[str, Any]:
        """``result.json``'s ``qa``: ``{status, checks: [{name, value, limit, outcome, message}]}``."""
        return {"status": self.status,
                "checks": [{"name": c.name, "value": c.value, "limit": c.limit,
                            "outcome": c.outcome, "message": c.message} for c in self.checks]}


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, NaN, infinite): what JSON and the SR
    can hold for an optional number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
