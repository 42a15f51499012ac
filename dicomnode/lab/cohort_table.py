"""Training cohorts: studies + outcomes -> a cached feature table (one row per patient).

Inputs: a synthetic cohort folder written by ``dicomnode synth cohort`` (``manifest.csv``,
label maps = exact truth), a feature cohort written by ``dicomnode cohort export``
(:mod:`dicomnode.lab.feature_cohort`: features only, read as they are), or a table of outcomes
and clinical data (CSV) whose ``study_dir`` column points at each study (a DICOM folder, a folder
with ``dicom/``, or a NIfTI image), with
``labels.nii.gz`` beside it when masks exist. Without masks the configured segmentation
backend draws them. Outputs: :class:`CohortTable`. Side effects: one ``.npz`` per case in the
cache folder (default ``<cohort>/.features``), so a second run only reads.

Per case: load -> labels -> measure -> features (``m_``, ``hdr_``, ``clin_``, ``rad_``; see
:mod:`dicomnode.predict.features`) -> image stack (``img_``: CT at the largest-area slice and
its neighbours, plus the lesion mask, on a fixed physical field of view).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.predict.image_features import ImageSpec, image_stack
from dicomnode.predict.radiomics_features import DEFAULT_RADIOMICS_PARAMS

log = logging.getLogger(__name__)

__all__ = [
    "SYNTH_CLINICAL_COLUMNS",
    "CohortTable",
    "build_table",
    "load_cohort",
    "read_cases",
]

#: Manifest columns of a synthetic cohort that a clinic would know. Everything else in the
#: manifest (site, design volume, heterogeneity, irregularity, markers, risks) is generator truth
#: and never becomes a feature.
#: Age and sex come from the DICOM header (``hdr_``), as for any study.
SYNTH_CLINICAL_COLUMNS = ("sbp_mmhg", "gcs", "onset_to_ct_h", "anticoagulation", "early_seizure")
OUTCOME_ALIASES = {"he": ("he", "he_observed", "expansion"), "pse": ("pse", "epilepsy")}
TRUE_RISK = {"he": "p_he", "pse": "p_pse"}
DEFAULT_IMAGE_SPEC = ImageSpec()


@dataclass
class CohortTable:
    """The feature table of a cohort: ``X[i, j]`` is feature ``names[j]`` of case ``ids[i]``."""

    ids: list[str]
    names: list[str]
    X: np.ndarray
    outcomes: dict[str, np.ndarray]  # target -> 0/1 (NaN where unknown)
    true_risk: dict[str, np.ndarray] = field(default_factory=dict)  # synthetic cohorts only
    synthetic: bool = False
    description: str = ""
    source: str = ""
    patients: list[str] = field(default_factory=list)  # per row, when known (feature cohorts)

    def target(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, y, row indices) of the cases whose ``name`` outcome is known."""
        if name not in self.outcomes:
            raise ValueError(f"cohort {self.source} has no {name!r} outcome; has {sorted(self.outcomes)}")
        y = self.outcomes[name]
        keep = np.flatnonzero(np.isfinite(y))
        return self.X[keep], y[keep].astype(int), keep

    def without_images(self) -> CohortTable:
        keep = [i for i, n in enumerate(self.names) if not n.startswith("img_")]
        return CohortTable(self.ids, [self.names[i] for i in keep], self.X[:, keep], self.outcomes,
                           self.true_risk, self.synthetic, self.description, self.source,
                           self.patients)


# -- case list ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    case_id: str
    study: Path  # DICOM folder or NIfTI file
    labels: Path | None
    clinical: dict[str, Any]
    outcomes: dict[str, float]
    true_risk: dict[str, float]


def _bool(v: Any) -> float:
    if v is None:
        return math.nan
    s = str(v).strip().lower()
    if s in ("true", "1", "1.0", "yes", "y"):
        return 1.0
    if s in ("false", "0", "0.0", "no", "n"):
        return 0.0
    return math.nan


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_cases(source: Path) -> tuple[list[Case], bool, str]:
    """Cases of a cohort folder (synthetic manifest) or outcome table; (cases, synthetic, text)."""
    source = Path(source)
    if source.is_dir() and (source / "manifest.csv").is_file():
        rows = [r for r in _read_csv(source / "manifest.csv") if r.get("class", "ich") == "ich"]
        cases = []
        for r in rows:
            base = source / r["baseline_dir"]
            outcomes = {"pse": _bool(r.get("pse"))}
            he = r.get("he_observed") or r.get("he")
            outcomes["he"] = _bool(he)
            cases.append(Case(
                r["patient_id"], base / "dicom", base / "labels.nii.gz",
                {k: r[k] for k in SYNTH_CLINICAL_COLUMNS if k in r},
                outcomes,
                {t: float(r[k]) for t, k in TRUE_RISK.items() if r.get(k) not in (None, "")},
            ))
        text = f"synthetic cohort {source} ({len(cases)} patients, dicomnode.lab.synth; labels = exact truth)"
        return cases, True, text
    table = source if source.is_file() else source / "outcomes.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{source}: neither a synthetic cohort (manifest.csv) nor an outcome "
                                "table (CSV with study_dir and he/pse columns)")
    rows = _read_csv(table)
    if not rows:
        raise ValueError(f"{table}: no rows")
    key = next((k for k in ("study_dir", "study", "path", "image") if k in rows[0]), None)
    if key is None:
        raise ValueError(f"{table}: needs a study_dir column (DICOM folder or NIfTI file per row)")
    idcol = next((k for k in ("case_id", "patient_id", "id") if k in rows[0]), None)
    cases = []
    for i, r in enumerate(rows):
        study = (table.parent / r[key]).resolve()
        lab = Path(r["labels"]) if r.get("labels") else None
        if lab is not None and not lab.is_absolute():
            lab = table.parent / lab
        if lab is None:
            for cand in (study / "labels.nii.gz", study.parent / "labels.nii.gz"):
                if cand.is_file():
                    lab = cand
                    break
        outcomes = {}
        for target, names in OUTCOME_ALIASES.items():
            col = next((n for n in names if n in r), None)
            if col is not None:
                outcomes[target] = _bool(r[col])
        if (study / "dicom").is_dir():
            study = study / "dicom"
        skip = {key, "labels", idcol, *sum(OUTCOME_ALIASES.values(), ())}
        cases.append(Case(r[idcol] if idcol else f"case-{i:05d}", study, lab,
                          {k: v for k, v in r.items() if k not in skip}, outcomes, {}))
    return cases, False, f"{len(cases)} cases from {table}"


# -- one case ----------------------------------------------------------------------------------------
def _load_volume(study: Path):
    """CTVolume from a DICOM folder or a NIfTI file."""
    from dicomnode.domain import CTVolume

    if study.is_file() and study.name.endswith((".nii", ".nii.gz")):
        import SimpleITK as sitk

        img = sitk.Cast(sitk.ReadImage(str(study)), sitk.sitkFloat32)
        return CTVolume(series_instance_uid="", study_instance_uid="", image=img, slices=(),
                        orientation=tuple(img.GetDirection()[:6]),
                        pixel_spacing_mm=(img.GetSpacing()[1], img.GetSpacing()[0]),
                        rows=img.GetSize()[1], columns=img.GetSize()[0])
    from dicomnode.load.volume import load_series

    files = sorted(p for p in study.iterdir() if p.is_file())
    return load_series(files, workers=1)


def _labels(case: Case, volume, backend):
    import SimpleITK as sitk

    from dicomnode.domain import LabelMap

    if case.labels is not None and case.labels.is_file():
        img = sitk.Cast(sitk.ReadImage(str(case.labels)), sitk.sitkUInt8)
        img.CopyInformation(volume.image) if img.GetSize() == volume.image.GetSize() else None
        return LabelMap(image=img, backend="reference", model="label map", model_version="")
    if backend is None:
        raise ValueError(f"{case.case_id}: no label map and no segmentation backend")
    return backend.segment(volume)


def case_features(case: Case, spec: ImageSpec | None, *, backend=None,
                  radiomics_params: Path | None = DEFAULT_RADIOMICS_PARAMS,
                  ) -> tuple[dict[str, float], np.ndarray | None]:
    """Features and image stack of one case (load -> labels -> measure -> features)."""
    from dicomnode.measure import measure
    from dicomnode.predict.features import extract_features

    volume = _load_volume(case.study)
    labels = _labels(case, volume, backend)
    m = measure(volume, labels)
    feats = extract_features(volume, labels, m, clinical=case.clinical, radiomics_params=radiomics_params)
    img = None if spec is None else image_stack(volume, labels, spec)
    return {k: float(v) for k, v in feats.items()}, img


def _cache_key(spec: ImageSpec | None, radiomics_params: Path | None, labels_from: str) -> str:
    text = json.dumps({"spec": None if spec is None else [list(spec.offsets_mm), spec.size, spec.crop_mm],
                       "rad": None if radiomics_params is None else Path(radiomics_params).read_text(),
                       "labels": labels_from, "v": 2}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def build_table(cases: Sequence[Case], *, spec: ImageSpec | None = DEFAULT_IMAGE_SPEC,
                cache_dir: Path | None = None,
                backend=None, radiomics_params: Path | None = DEFAULT_RADIOMICS_PARAMS,
                synthetic: bool = False,
                description: str = "", source: str = "",
                progress: Callable[[int, int], None] | None = None) -> CohortTable:
    """Feature table of ``cases``; each case's result is cached in ``cache_dir`` when given.

    A case that fails to load is logged and left out (its id is listed at WARNING).
    """
    key = _cache_key(spec, radiomics_params, "backend" if backend is not None else "labels")
    rows: list[dict[str, float]] = []
    imgs: list[np.ndarray | None] = []
    kept: list[Case] = []
    for i, case in enumerate(cases):
        path = None if cache_dir is None else Path(cache_dir) / f"{case.case_id}-{key}.npz"
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                feats = dict(zip(z["names"].tolist(), z["values"].tolist(), strict=True))
                img = z["image"] if "image" in z.files else None
        else:
            try:
                feats, img = case_features(case, spec, backend=backend, radiomics_params=radiomics_params)
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("case %s left out: %s: %s", case.case_id, type(exc).__name__, exc)
                continue
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                arrays = {"names": np.array(list(feats)), "values": np.array(list(feats.values()))}
                if img is not None:
                    arrays["image"] = img
                np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        rows.append(feats)
        imgs.append(img)
        kept.append(case)
        if progress is not None:
            progress(i + 1, len(cases))
    if not rows:
        raise ValueError(f"no usable cases in {source or 'the cohort'}")
    names = sorted({k for r in rows for k in r}, key=name_order)
    X = np.array([[r.get(n, math.nan) for n in names] for r in rows], dtype=float)
    if spec is not None:
        X = np.hstack([X, np.stack([im.reshape(-1) for im in imgs])])  # type: ignore[union-attr]
        names = names + spec.column_names()
    targets = sorted({t for c in kept for t in c.outcomes})
    outcomes = {t: np.array([c.outcomes.get(t, math.nan) for c in kept], float) for t in targets}
    risks = sorted({t for c in kept for t in c.true_risk})
    true_risk = {t: np.array([c.true_risk.get(t, math.nan) for c in kept], float) for t in risks}
    return CohortTable([c.case_id for c in kept], names, X, outcomes, true_risk, synthetic,
                       description, source)


def name_order(n: str) -> tuple[int, str]:
    order = ("m_", "hdr_", "clin_", "rad_")
    return next((i for i, p in enumerate(order) if n.startswith(p)), len(order)), n


def load_cohort(source: Path, *, images: bool = True, spec: ImageSpec | None = None,
                cache_dir: Path | None = None, backend=None,
                radiomics_params: Path | None = DEFAULT_RADIOMICS_PARAMS, limit: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> CohortTable:
    """Read a cohort (synthetic folder, outcome CSV or a feature cohort from
    ``dicomnode cohort export``) and build its cached feature table."""
    source = Path(source)
    from dicomnode.lab.feature_cohort import is_feature_cohort, read_feature_cohort

    if is_feature_cohort(source):  # features already computed by the node: nothing to build
        return read_feature_cohort(source, images=images, limit=limit)
    cases, synthetic, text = read_cases(source)
    if limit is not None:
        cases = cases[:limit]
    if cache_dir is None:
        cache_dir = (source if source.is_dir() else source.parent) / ".features"
    return build_table(cases, spec=(spec or ImageSpec()) if images else None, cache_dir=cache_dir,
                       backend=backend, radiomics_params=radiomics_params, synthetic=synthetic,
                       description=text, source=str(source), progress=progress)


def synthetic_cases(folder: Path, n: int, seed: int) -> list[Case]:
    """Cases of a synthetic cohort from its generator (``sample_cohort_arrays(n, seed)``) for
    the patient folders that exist: reads a cohort whose rendering is still running (no
    manifest yet). Outcomes are the drawn labels (``he``, ``pse``)."""
    from dicomnode.lab.synth import sample_cohort_arrays

    t = sample_cohort_arrays(n, seed)
    cases = []
    for i in range(n):
        pid = f"SYNTH-C{seed}-{i:04d}"
        base = Path(folder) / pid / "baseline"
        if not (base / "labels.nii.gz").is_file():
            continue
        cases.append(Case(
            pid, base / "dicom", base / "labels.nii.gz",
            {k: t[k][i].item() for k in SYNTH_CLINICAL_COLUMNS},
            {"he": float(t["he"][i]), "pse": float(t["pse"][i])},
            {"he": float(t["p_he"][i]), "pse": float(t["p_pse"][i])},
        ))
    return cases


def toy_cohort(n: int = 300, *, seed: int = 0, size: int = 16, missing: float = 0.05) -> CohortTable:
    """A small synthetic feature table with images, for tests and demos (no rendering).

    Patients come from the synthetic cohort model (``sample_cohort_arrays``); outcomes are
    *enriched* versions of its HE and PSE models (stronger effects, higher prevalence) so that
    the oracle AUC is above 0.8 in a few hundred patients. Features are noisy read-outs of the
    generator's image properties (volume, cortical involvement, density spread, shape), the
    clinical variables, some pure-noise radiomics, ``missing`` of the values NaN, and a
    ``(3, size, size)`` image (two CT planes windowed to [0, 1] and the lesion mask) whose lesion
    area grows with the volume, whose texture grows with heterogeneity and which shows a cortical
    band when the clot reaches the cortex.
    """
    from dicomnode.lab.synth import sample_cohort_arrays

    rng = np.random.default_rng([seed, 99])
    t = sample_cohort_arrays(n, seed)
    lv = np.log2(t["volume_ml"] / 10.0)
    cort = t["cortical_involvement"].astype(float)
    het, irr = t["heterogeneity"], t["irregularity"]
    logit_pse = -1.6 + 2.2 * cort + 1.1 * lv + 0.6 * (t["age_y"] < 65)
    logit_he = -1.2 + 1.3 * lv + 3.0 * (het - 0.4) + 1.0 * t["anticoagulation"] + 1.0 * cort
    risk = {"pse": 1 / (1 + np.exp(-logit_pse)), "he": 1 / (1 + np.exp(-logit_he))}
    outcomes = {k: (rng.random(n) < v).astype(float) for k, v in risk.items()}
    feats = {
        "m_ich_volume_ml": t["volume_ml"] * np.exp(rng.normal(0, 0.05, n)),
        "m_cortical_involvement": cort,
        "m_hu_sd": 4 + 9 * het + rng.normal(0, 1.0, n),
        "m_solidity": 0.95 - 0.35 * irr + rng.normal(0, 0.03, n),
        "hdr_age_y": t["age_y"],
        "hdr_sex_male": (t["sex"] == "M").astype(float),
        "clin_onset_to_ct_h": t["onset_to_ct_h"],
        "clin_anticoagulation": t["anticoagulation"].astype(float),
        "clin_sbp_mmhg": t["sbp_mmhg"],
        "clin_gcs": t["gcs"],
        "rad_original_firstorder_StandardDeviation": 4 + 9 * het + rng.normal(0, 1.5, n),
        "rad_original_shape_Sphericity": 0.9 - 0.3 * irr + rng.normal(0, 0.05, n),
        "rad_original_shape_MeshVolume": t["volume_ml"] * 1000 * np.exp(rng.normal(0, 0.08, n)),
        **{f"rad_noise_{k}": rng.normal(0, 1, n) for k in range(3)},
    }
    names = list(feats)
    X = np.column_stack([feats[k] for k in names]).astype(float)
    X[rng.random(X.shape) < missing] = np.nan
    spec = ImageSpec(offsets_mm=(-5.0, 5.0), size=size)
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    imgs = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        r = np.clip(np.cbrt(t["volume_ml"][i]) / np.cbrt(120.0) * size * 0.45, 1.2, size * 0.48)
        mask = (yy / r) ** 2 + (xx / r) ** 2 <= 1.0
        base = 0.35 + rng.normal(0, 0.03, (2, size, size))
        tex = rng.normal(0, 0.05 + 0.25 * het[i], (2, size, size))
        base[:, mask] = 0.85 + tex[:, mask]
        if cort[i]:
            base[:, :2, :] = 0.55
        imgs[i, :2] = np.clip(base, 0, 1)
        imgs[i, 2] = mask
    X = np.hstack([X, imgs.reshape(n, -1)])
    return CohortTable([f"TOY-{seed}-{i:04d}" for i in range(n)], names + spec.column_names(), X,
                       outcomes, risk, True, f"toy synthetic table (cohort.toy_cohort, n={n}, seed={seed})",
                       "toy")
