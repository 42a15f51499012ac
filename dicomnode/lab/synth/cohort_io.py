"""Rendered cohorts on disk: baseline (and follow-up) studies plus a manifest (make_cohort).

Inputs: cohort size and seed. Outputs: ``out_dir/<patient>/baseline/``, optionally
``out_dir/<patient>/followup/``, ``out_dir/manifest.csv``, ``out_dir/manifest.json`` and
``out_dir/cohort_model.json`` (the true outcome models and their Bayes-optimal AUCs).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .cohort import (
    HE_ABS_ML,
    HE_COEFS,
    HE_REL,
    PSE_COEFS,
    SEIZURE_COEFS,
    bayes_optimal_auc,
    sample_cohort_arrays,
)
from .lesion import LesionSpec, Markers
from .render import ScanGeometry
from .study import Case, StudyTruth, build_case, geometry_for, render_case, write_scan

log = logging.getLogger(__name__)


def he_clinical(baseline_ml: float, followup_ml: float) -> bool:
    """Haematoma expansion: growth of more than 6 mL or more than 33 %."""
    growth = followup_ml - baseline_ml
    return bool(growth > HE_ABS_ML or (baseline_ml > 0 and growth > HE_REL * baseline_ml))


def cohort_model() -> dict:
    """The generative outcome models, as written to cohort_model.json."""
    return {
        "he": {
            "coefficients": HE_COEFS,
            "bayes_optimal_auc": round(bayes_optimal_auc("he"), 4),
            "definition": "follow-up ICH volume - baseline > 6 mL or > 33 %",
        },
        "pse": {"coefficients": PSE_COEFS, "bayes_optimal_auc": round(bayes_optimal_auc("pse"), 4)},
        "early_seizure": {"coefficients": SEIZURE_COEFS},
        "link": "logistic",
        "docs": "docs/synthetic-data.md",
    }


def make_cohort(
    out_dir: Path,
    n: int,
    *,
    seed: int = 0,
    follow_up: bool = False,
    matrix: int = 128,
    thickness_mm: float = 5.0,
    n_negative: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Render ``n`` ICH patients (and ``n_negative`` normal scans); return the manifest path.

    Patient ``i`` is drawn with case seed ``seed * 100000 + i``; its clinical variables and
    outcomes are row ``i`` of ``sample_cohort_arrays(n, seed)``.
    """
    if n < 0 or n_negative < 0 or n + n_negative < 1:
        raise ValueError(f"need at least one patient, got n={n}, n_negative={n_negative}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = sample_cohort_arrays(max(n, 1), seed)
    geom = geometry_for(matrix, thickness_mm, 0.0, None)
    rows = []
    for i in range(n + n_negative):
        row, patient = _draw_patient(i, seed, table, negative=i >= n)
        case = patient.case
        base = _baseline_scan(out_dir / patient.patient_id / "baseline", case, geom, resume=not follow_up)
        row.update(_baseline_columns(out_dir, patient, base))
        if follow_up and case.lesion is not None:
            row.update(_followup_scan(out_dir, patient, case.lesion, geom, table, base))
        rows.append(row)
        if progress is not None:
            progress(i + 1)
    return _write_manifest(out_dir, rows)


@dataclass(frozen=True)
class _Patient:
    """Patient ``index`` of a cohort and the case drawn for it."""

    index: int
    patient_id: str
    case: Case


def _draw_patient(
    i: int, seed: int, table: dict[str, np.ndarray], *, negative: bool
) -> tuple[dict, _Patient]:
    """(first manifest columns, patient) ``i``: row ``i`` of ``table``, or a normal scan."""
    pid = f"SYNTH-C{seed}-{i:04d}"
    row: dict = {"patient_id": pid, "class": "negative" if negative else "ich"}
    if negative:
        case = build_case(
            seed * 100000 + i,
            hemorrhage_ml=None,
            site="lobar",
            patient_name=f"SYNTH^C{seed}-{i:04d}",
            patient_id=pid,
        )
        return row, _Patient(i, pid, case)
    row.update({k: _plain(v[i]) for k, v in table.items()})
    case = build_case(
        seed * 100000 + i,
        hemorrhage_ml=float(table["volume_ml"][i]),
        site=str(table["site"][i]),
        ivh=bool(table["ivh"][i]),
        markers=Markers(
            heterogeneity=float(table["heterogeneity"][i]),
            irregularity=float(table["irregularity"][i]),
            blend_sign=bool(table["blend_sign"][i]),
            black_hole_sign=bool(table["black_hole_sign"][i]),
            swirl_sign=bool(table["swirl_sign"][i]),
        ),
        age_y=int(table["age_y"][i]),
        sex=str(table["sex"][i]),
        patient_name=f"SYNTH^C{seed}-{i:04d}",
        patient_id=pid,
    )
    return row, _Patient(i, pid, case)


def _baseline_scan(
    folder: Path, case: Case, geom: ScanGeometry, *, resume: bool
) -> SimpleNamespace | StudyTruth:
    """Render and write the baseline scan, or (``resume``) take the one a previous run finished."""
    done = _finished_scan(folder) if resume else None
    if done is not None:
        return done
    ph = render_case(case, geom, lesion=case.lesion, scan=0)
    return write_scan(
        folder,
        case,
        ph,
        lesion=case.lesion,
        scan=0,
        acquired=case.baseline_time,
        compress="none",
    )


def _baseline_columns(
    out_dir: Path, patient: _Patient, base: SimpleNamespace | StudyTruth
) -> dict[str, object]:
    """Manifest columns of the baseline scan."""
    case, pid = patient.case, patient.patient_id
    return {
        "age_y": case.age_y,
        "sex": case.sex,
        "baseline_study_uid": base.study_instance_uid,
        "baseline_dir": str((out_dir / pid / "baseline").relative_to(out_dir)),
        "ich_volume_ml": base.ich_volume_ml,
        "ivh_volume_ml": base.ivh_volume_ml,
        "oedema_volume_ml": base.oedema_volume_ml,
        "cortical_involvement_measured": base.cortical_involvement,
    }


def _followup_scan(
    out_dir: Path,
    patient: _Patient,
    lesion: LesionSpec,
    geom: ScanGeometry,
    table: dict[str, np.ndarray],
    base: SimpleNamespace | StudyTruth,
) -> dict[str, object]:
    """Render and write the follow-up (``lesion`` grown to the drawn volume, more oedema);
    return its manifest columns."""
    case, pid, i = patient.case, patient.patient_id, patient.index
    ratio = float(table["followup_volume_ml"][i] / table["volume_ml"][i])
    design_ml = lesion.unit_volume_mm3 * lesion.scale_mm**3 / 1000.0
    grown = replace(lesion.scaled_to(design_ml * ratio), oedema_frac=lesion.oedema_frac * 1.3)
    acquired = case.baseline_time + timedelta(hours=float(table["followup_delay_h"][i]))
    ph = render_case(case, geom, lesion=grown, scan=1)
    fu = write_scan(
        out_dir / pid / "followup", case, ph, lesion=grown, scan=1, acquired=acquired, compress="none"
    )
    observed = he_clinical(base.ich_volume_ml, fu.ich_volume_ml)
    if observed != bool(table["he"][i]):
        log.warning("patient %d: HE drawn %s but voxel volumes say %s", i, bool(table["he"][i]), observed)
    return {
        "followup_study_uid": fu.study_instance_uid,
        "followup_dir": str((out_dir / pid / "followup").relative_to(out_dir)),
        "followup_ich_volume_ml": fu.ich_volume_ml,
        "he_observed": observed,
    }


def _write_manifest(out_dir: Path, rows: list[dict]) -> Path:
    """Write cohort_model.json, manifest.csv and manifest.json; return the CSV's path."""
    (out_dir / "cohort_model.json").write_text(json.dumps(cohort_model(), indent=2) + "\n")
    manifest = out_dir / "manifest.csv"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (out_dir / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")
    return manifest


def _finished_scan(folder: Path) -> SimpleNamespace | None:
    """A scan an interrupted run already wrote (truth.json is written last), else None."""
    path = folder / "truth.json"
    if not path.is_file():
        return None
    t = json.loads(path.read_text())
    return SimpleNamespace(study_instance_uid=t["study_instance_uid"],
                           ich_volume_ml=t["ich_volume_ml"], ivh_volume_ml=t["ivh_volume_ml"],
                           oedema_volume_ml=t["oedema_volume_ml"],
                           cortical_involvement=t["cortical_involvement"])


def _plain(v):
    """numpy scalar -> plain Python (for CSV and JSON)."""
    return v.item() if isinstance(v, np.generic) else v
