"""Synthetic studies on disk: one series, its label map and its truth (make_study).

Inputs: a seed and the phantom's design (haemorrhage volume, site, markers, geometry).
Outputs: ``out_dir/dicom/IM*.dcm``, ``out_dir/labels.nii.gz``, ``out_dir/truth.json``.
Side effects: writes those files; nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from .anatomy import AnatomyParams
from .dicom_io import COMPRESSIONS, SeriesMeta, make_uid, write_labels, write_series
from .lesion import LesionSpec, Markers, MassEffect, canonical_site, sample_lesion
from .render import (
    COVERAGE_MM,
    LABEL_ICH,
    LABEL_IVH,
    LABEL_OEDEMA,
    Phantom,
    Pose,
    ScanGeometry,
    add_noise,
    add_streaks,
    paint_lesion,
    render_anatomy,
)

log = logging.getLogger(__name__)

LABELS = {
    0: "background",
    LABEL_ICH: "intraparenchymal haemorrhage (ICH)",
    LABEL_IVH: "intraventricular haemorrhage (IVH)",
    LABEL_OEDEMA: "perihaematomal oedema",
}
DEFAULT_MARKERS = Markers(
    heterogeneity=0.3, irregularity=0.3, blend_sign=False, black_hole_sign=False, swirl_sign=False
)


@dataclass(frozen=True)
class StudyTruth:
    """What was written and what is exactly true about it (also in ``truth.json``)."""

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    n_slices: int
    ich_volume_ml: float  # label 1 voxels x voxel volume
    ivh_volume_ml: float
    oedema_volume_ml: float
    site: str  # a lesion site, or "none"
    cortical_involvement: bool
    dicom_dir: Path
    label_path: Path
    truth_path: Path
    details: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Case:
    """One patient: identity, anatomy and (optionally) a haematoma; shared by all scans."""

    seed: int
    patient_name: str
    patient_id: str
    age_y: int
    sex: str
    anatomy: AnatomyParams
    pose: Pose
    lesion: LesionSpec | None
    baseline_time: datetime


def build_case(
    seed: int,
    *,
    hemorrhage_ml: float | None,
    site: str,
    ivh: bool = False,
    markers: Markers | None = None,
    age_y: int | None = None,
    sex: str | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
) -> Case:
    """Draw a patient from the seed (independent random streams per aspect)."""
    rng = np.random.default_rng([seed, 1])
    age = int(age_y if age_y is not None else np.clip(rng.normal(68, 12), 25, 95))
    sex = sex or ("M" if rng.random() < 0.58 else "F")
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    anat = AnatomyParams.sample(np.random.default_rng([seed, 2]), age_y=age, sex=sex)
    lesion = None
    if hemorrhage_ml is not None:
        if not 0.1 <= hemorrhage_ml <= 150.0:
            raise ValueError(f"hemorrhage_ml must be 0.1..150, got {hemorrhage_ml}")
        lesion = sample_lesion(
            np.random.default_rng([seed, 3]),
            anat,
            site=site,
            volume_ml=hemorrhage_ml,
            markers=markers or DEFAULT_MARKERS,
            ivh=ivh,
        )
    else:
        canonical_site(site)  # still validate the argument
    day = datetime(2024, 1, 1, 8, 0) + timedelta(
        days=int(rng.integers(0, 365)), minutes=int(rng.integers(0, 12 * 60))
    )
    return Case(
        seed=seed,
        patient_name=patient_name or f"SYNTH^{seed:04d}",
        patient_id=patient_id or f"SYNTH-{seed:04d}",
        age_y=age,
        sex=sex,
        anatomy=anat,
        pose=Pose.sample(np.random.default_rng([seed, 4])),
        lesion=lesion,
        baseline_time=day,
    )


def render_case(
    case: Case,
    geom: ScanGeometry,
    *,
    lesion: LesionSpec | None,
    scan: int,
    noise_sd_hu: float = 5.0,
    artefacts: bool = True,
    want_tissue: bool = False,
) -> Phantom:
    """Render one scan (``scan`` 0 = baseline, 1 = follow-up) of a case."""
    warp = MassEffect.for_lesion(lesion) if lesion is not None else None
    hu, tissue = render_anatomy(
        case.anatomy,
        geom,
        case.pose,
        warp=warp,
        beam_hardening_hu=6.0 if artefacts else 0.0,
        want_tissue=want_tissue,
    )
    labels = np.zeros(hu.shape, dtype=np.uint8)
    frac_ml = cortical_ml = 0.0
    if lesion is not None:
        labels, frac_ml, cortical_ml = paint_lesion(hu, case.anatomy, lesion, geom, case.pose, warp=warp)
    rng = np.random.default_rng([case.seed, 5, scan])
    if artefacts:
        add_streaks(hu, case.anatomy, geom, case.pose, rng)
    add_noise(hu, geom, noise_sd_hu, rng)
    return Phantom(
        hu=hu, labels=labels, geometry=geom, tissue=tissue, ich_fraction_ml=frac_ml, cortical_ml=cortical_ml
    )


def geometry_for(matrix: int, thickness_mm: float, tilt_deg: float, n_slices: int | None) -> ScanGeometry:
    """Default coverage (skull base to vertex) unless ``n_slices`` is given."""
    n = n_slices if n_slices is not None else max(1, int(round(COVERAGE_MM / thickness_mm)))
    return ScanGeometry(matrix=matrix, thickness_mm=thickness_mm, n_slices=n, tilt_deg=tilt_deg)


def write_scan(
    out_dir: Path,
    case: Case,
    phantom: Phantom,
    *,
    lesion: LesionSpec | None,
    scan: int,
    acquired: datetime,
    compress: str,
    extra: dict | None = None,
) -> StudyTruth:
    """Write series, label map and truth.json of one rendered scan."""
    geom = phantom.geometry
    meta = _series_meta(case, geom, scan=scan, acquired=acquired)
    out_dir.mkdir(parents=True, exist_ok=True)
    dicom_dir = out_dir / "dicom"
    write_series(dicom_dir, phantom.hu, geom, meta, compress=compress)
    label_path = out_dir / "labels.nii.gz"
    write_labels(label_path, phantom.labels, geom)
    vols = _Volumes.of(phantom)
    details = {
        **_scan_identity(case, meta, scan=scan, acquired=acquired),
        "geometry": _geometry_summary(geom, vols.voxel_ml),
        "compression": compress,
        "labels": {str(k): v for k, v in LABELS.items()},
        "ich_volume_ml": vols.ich_ml,
        "ivh_volume_ml": vols.ivh_ml,
        "oedema_volume_ml": vols.oedema_ml,
        "ich_partial_volume_ml": phantom.ich_fraction_ml,
        "cortical_ml": phantom.cortical_ml,
        "cortical_involvement": vols.cortical_involvement,
        "anatomy": _anatomy_summary(case),
        "lesion": _lesion_summary(case, lesion),
        **(extra or {}),
    }
    truth_path = out_dir / "truth.json"
    truth_path.write_text(json.dumps(details, indent=2, sort_keys=True) + "\n")
    return StudyTruth(
        study_instance_uid=str(meta.study_uid),
        series_instance_uid=str(meta.series_uid),
        patient_id=case.patient_id,
        n_slices=geom.n_slices,
        ich_volume_ml=vols.ich_ml,
        ivh_volume_ml=vols.ivh_ml,
        oedema_volume_ml=vols.oedema_ml,
        site=lesion.site if lesion else "none",
        cortical_involvement=vols.cortical_involvement,
        dicom_dir=dicom_dir,
        label_path=label_path,
        truth_path=truth_path,
        details=details,
    )


def _series_meta(case: Case, geom: ScanGeometry, *, scan: int, acquired: datetime) -> SeriesMeta:
    """Identity, dates and descriptions of the series of scan ``scan`` (UIDs follow the seed)."""
    kind = "baseline" if scan == 0 else f"follow-up {scan}"
    study_uid = make_uid(case.seed, case.patient_id, "study", scan)
    return SeriesMeta(
        patient_name=case.patient_name,
        patient_id=case.patient_id,
        # Fixed per patient: a follow-up carries the birth date of the baseline.
        birth_date=(case.baseline_time - timedelta(days=int(case.age_y * 365.25 + 100))).strftime("%Y%m%d"),
        sex=case.sex,
        age_y=case.age_y,
        study_uid=study_uid,
        series_uid=make_uid(case.seed, case.patient_id, "series", scan, geom),
        frame_uid=make_uid(case.seed, case.patient_id, "frame", scan),
        acquired=acquired,
        accession=f"SY{case.seed % 10**8:08d}{scan}",
        study_id=f"{scan + 1}",
        study_description="SYNTHETIC HEAD CT (phantom)",
        series_description=f"SYNTHETIC Head {geom.thickness_mm:g}mm STANDARD {kind}"[:64],
        series_number=2,
        uid_seed=f"{case.seed}/{case.patient_id}/{scan}/{geom}",
    )


@dataclass(frozen=True)
class _Volumes:
    """Label volumes of a phantom (voxel count x voxel volume) and cortical involvement."""

    voxel_ml: float
    ich_ml: float
    ivh_ml: float
    oedema_ml: float
    cortical_involvement: bool

    @classmethod
    def of(cls, phantom: Phantom) -> _Volumes:
        geom = phantom.geometry
        voxel_ml = geom.pixel_spacing_mm**2 * geom.thickness_mm / 1000.0
        vols = {
            k: float(np.count_nonzero(phantom.labels == k) * voxel_ml)
            for k in (LABEL_ICH, LABEL_IVH, LABEL_OEDEMA)
        }
        ich_ml = vols[LABEL_ICH]
        # Involved when the cortical part is not a few stray samples of the clot's edge.
        cortical = bool(ich_ml > 0 and phantom.cortical_ml >= max(0.05, 0.01 * ich_ml))
        return cls(voxel_ml, ich_ml, vols[LABEL_IVH], vols[LABEL_OEDEMA], cortical)


def _scan_identity(case: Case, meta: SeriesMeta, *, scan: int, acquired: datetime) -> dict:
    """truth.json: generator, seed, patient and UIDs of one scan."""
    return {
        "synthetic": True,
        "generator": "dicomnode.lab.synth",
        "seed": case.seed,
        "scan": scan,
        "patient_id": case.patient_id,
        "patient_name": case.patient_name,
        "age_y": case.age_y,
        "sex": case.sex,
        "acquired": acquired.isoformat(),
        "study_instance_uid": str(meta.study_uid),
        "series_instance_uid": str(meta.series_uid),
    }


def _geometry_summary(geom: ScanGeometry, voxel_ml: float) -> dict:
    """truth.json: the scan geometry, with the exact index -> LPS affine."""
    return {
        "matrix": geom.matrix,
        "n_slices": geom.n_slices,
        "pixel_spacing_mm": geom.pixel_spacing_mm,
        "thickness_mm": geom.thickness_mm,
        "tilt_deg": geom.tilt_deg,
        "fov_mm": geom.fov_mm,
        "voxel_ml": voxel_ml,
        "affine_lps": geom.affine_lps().round(6).tolist(),
    }


def _to_patient(case: Case, h: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in case.pose.offset_mm + case.pose.rot @ h]


def _anatomy_summary(case: Case) -> dict:
    a = case.anatomy
    s = np.asarray(a.scale)
    return {
        "head_scale": [round(v, 4) for v in a.scale],
        "atrophy": round(a.atrophy, 3),
        "ventricle_scale": round(a.ventricle_scale, 3),
        "tissue_hu": {k: round(v, 1) for k, v in a.hu.items()},
        "calcifications": [
            {
                "name": c.name,
                "centre_lps_mm": _to_patient(case, np.array(c.centre) * s),
                "radius_mm": round(c.radius_mm, 2),
                "hu": round(c.hu, 1),
            }
            for c in a.calcifications
        ],
    }


def _lesion_summary(case: Case, lesion: LesionSpec | None) -> dict | None:
    if lesion is None:
        return None
    return {
        "site": lesion.site,
        "lobe": lesion.lobe,
        "side": "left" if lesion.side > 0 else "right",
        "centre_lps_mm": _to_patient(case, lesion.centre_mm),
        "design_volume_ml": round(lesion.unit_volume_mm3 * lesion.scale_mm**3 / 1000, 3),
        "markers": asdict(lesion.markers),
        "mean_hu": round(lesion.hu_mean, 1),
        "oedema_hu": round(lesion.oedema_hu, 1),
        "ivh": lesion.ivh,
        "n_satellites": len(lesion.satellites),
        "n_lobes": len(lesion.lobes),
    }


def make_study(
    out_dir: Path,
    *,
    seed: int = 0,
    hemorrhage_ml: float | None = 30.0,
    site: str = "lobar",
    thickness_mm: float = 5.0,
    matrix: int = 512,
    tilt_deg: float = 0.0,
    compress: str = "none",
    ivh: bool = False,
    n_slices: int | None = None,
    noise_sd_hu: float = 5.0,
    artefacts: bool = True,
    markers: Markers | None = None,
    age_y: int | None = None,
    sex: str | None = None,
) -> StudyTruth:
    """Write one synthetic head CT study with its exact label map and truth.

    Parameters
    ----------
    out_dir : Path
        Receives ``dicom/``, ``labels.nii.gz`` and ``truth.json``.
    seed : int
        Everything (anatomy, clot, noise, UIDs, dates) follows from it; same seed, same bytes.
    hemorrhage_ml : float or None
        Design haematoma volume (before voxelisation); None for a normal scan.
    site : str
        basal_ganglia (alias deep), thalamus, lobar, lobar_subcortical, cerebellar, brainstem.
    thickness_mm, matrix, tilt_deg, n_slices
        Geometry; the field of view is 250 mm whatever the matrix.
    compress : str
        ``none``, ``jpegls`` or ``j2k`` (all lossless).
    noise_sd_hu : float
        Quantum noise SD (about 3 to 8 HU is realistic).
    artefacts : bool
        Skull-base streaks and beam hardening.

    Returns
    -------
    StudyTruth
    """
    if compress not in COMPRESSIONS:
        raise ValueError(f"compress must be one of {sorted(COMPRESSIONS)}, got {compress!r}")
    t0 = time.perf_counter()
    case = build_case(
        seed, hemorrhage_ml=hemorrhage_ml, site=site, ivh=ivh, markers=markers, age_y=age_y, sex=sex
    )
    geom = geometry_for(matrix, thickness_mm, tilt_deg, n_slices)
    phantom = render_case(
        case, geom, lesion=case.lesion, scan=0, noise_sd_hu=noise_sd_hu, artefacts=artefacts
    )
    truth = write_scan(
        Path(out_dir),
        case,
        phantom,
        lesion=case.lesion,
        scan=0,
        acquired=case.baseline_time,
        compress=compress,
    )
    log.info(
        "synthetic study %s: %d slices, ICH %.1f mL in %.2f s",
        truth.series_instance_uid,
        geom.n_slices,
        truth.ich_volume_ml,
        time.perf_counter() - t0,
    )
    return truth
