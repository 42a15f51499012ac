"""Train and validate an HE/PSE preset: repeated stratified CV, final fit, report, bundle.

Inputs: a :class:`~dicomnode.lab.cohort_table.CohortTable`, a target (``he`` or ``pse``) and a
preset name (:mod:`dicomnode.lab.predictor_presets`). Outputs: a result dict (metrics with bootstrap
CIs, curves, confusion matrix, oracle AUC on synthetic cohorts) and, with ``out``, a model
folder: the bundle (skops + model.json, :mod:`dicomnode.predict.bundle`), ``report.html``,
``MODEL_CARD.md`` and ``validation.json``. Side effects: writes ``out``.

Every fold builds a fresh estimator and fits it on the fold's training part only; the deep
parts are steps of that estimator, so no image of a test fold is ever seen in training.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from dicomnode.lab.cohort_table import CohortTable
from dicomnode.lab.metrics import (
    calibration_curve,
    calibration_intercept_slope,
    confusion,
    decision_curve,
    oracle_auc,
    pr_points,
    roc_points,
    summarize,
)
from dicomnode.lab.predictor_presets import build_preset, get_preset, image_shape_of
from dicomnode.predict.bundle_checks import jsonable

log = logging.getLogger(__name__)

__all__ = ["cross_validate", "evaluate", "fit_final", "library_versions", "train_preset",
           "write_model_card"]

Progress = Callable[[str, int, int], None]


def evaluate(y: np.ndarray, p: np.ndarray, *, threshold: float = 0.5, n_boot: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """Metrics (with CIs), curves, confusion matrix and calibration summary of predictions."""
    cal = calibration_curve(y, p)
    return {
        "metrics": summarize(y, p, threshold, n_boot=n_boot, seed=seed),
        "confusion": confusion(y, p, threshold),
        "curves": {"roc": roc_points(y, p), "pr": pr_points(y, p), "calibration": cal,
                   "dca": decision_curve(y, p, np.linspace(0.01, min(0.8, max(0.3, 3 * float(np.mean(y)))),
                                                           60))},
        "calibration": {**calibration_intercept_slope(y, p), "ece": cal["ece"][0]},
    }


def cross_validate(preset: str, X: np.ndarray, y: np.ndarray, names: list[str], *, folds: int = 5,
                   repeats: int = 2, seed: int = 0, tiny: bool = False,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Out-of-fold probabilities of ``preset`` (repeated stratified K-fold, fixed seeds).

    Returns ``{"oof": (repeats, n) array, "p": mean over repeats, "repeat_auc": [...]}``.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    n_min = int(min(y.sum(), (1 - y).sum()))
    if n_min < folds:
        raise ValueError(f"{folds}-fold CV needs at least {folds} cases of each class; the smaller "
                         f"class has {n_min}")
    oof = np.full((repeats, len(y)), np.nan)
    total, done = folds * repeats, 0
    for r in range(repeats):
        skf = StratifiedKFold(folds, shuffle=True, random_state=seed + 1000 * r)
        for k, (tr, te) in enumerate(skf.split(X, y)):
            est = build_preset(preset, names, seed=seed + 100 * r + k, tiny=tiny)
            est.fit(X[tr], y[tr])
            oof[r, te] = est.predict_proba(X[te])[:, 1]
            done += 1
            if progress is not None:
                progress(f"{preset}: repeat {r + 1} fold {k + 1}", done, total)
    p = oof.mean(axis=0)
    return {"oof": oof, "p": p, "repeat_auc": [float(roc_auc_score(y, o)) for o in oof]}


def fit_final(preset: str, X: np.ndarray, y: np.ndarray, names: list[str], *, seed: int = 0,
              tiny: bool = False):
    """The preset fit on every case (the model that is served)."""
    est = build_preset(preset, names, seed=seed, tiny=tiny)
    return est.fit(X, np.asarray(y).astype(int))


def library_versions() -> dict[str, str]:
    import scipy
    import sklearn
    import skops

    from dicomnode import __version__

    out = {"dicomnode": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "skops": skops.__version__}
    import torch  # a dependency of the package (the CNN presets train with it)

    out["torch"] = torch.__version__
    return out


def train_preset(table: CohortTable, target: str, preset: str, *, out: Path | None = None,
                 folds: int = 5, repeats: int = 2, seed: int = 0, threshold: float = 0.5,
                 n_boot: int = 1000, tiny: bool = False, compare: bool = True,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Cross-validate ``preset`` on ``table`` for ``target``, fit it on all data, write ``out``."""
    t0 = time.perf_counter()
    p = get_preset(preset)
    if target not in ("he", "pse"):
        raise ValueError(f"target must be 'he' or 'pse', got {target!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    X, y, rows = table.target(target)
    names = list(table.names)
    if not p.uses_images and image_shape_of(names) is not None:
        keep = [i for i, n in enumerate(names) if not n.startswith("img_")]
        X, names = X[:, keep], [names[i] for i in keep]
    cv = cross_validate(preset, X, y, names, folds=folds, repeats=repeats, seed=seed, tiny=tiny,
                        progress=progress)
    main = evaluate(y, cv["p"], threshold=threshold, n_boot=n_boot, seed=seed)
    main["repeat_auc"] = cv["repeat_auc"]
    comparators: dict[str, Any] = {}
    for other in p.comparators if compare else ():
        ok_names = names if get_preset(other).uses_images else [n for n in names if not n.startswith("img_")]
        cols = [names.index(n) for n in ok_names]
        try:
            c = cross_validate(other, X[:, cols], y, ok_names, folds=folds, repeats=repeats, seed=seed,
                               tiny=tiny, progress=progress)
        except ValueError as exc:
            log.warning("comparator %s skipped: %s", other, exc)
            continue
        comparators[other] = evaluate(y, c["p"], threshold=threshold, n_boot=n_boot, seed=seed)
        comparators[other]["repeat_auc"] = c["repeat_auc"]
    result: dict[str, Any] = {
        "preset": preset, "method": p.method, "summary": p.summary, "target": target,
        "n_cases": int(len(y)), "n_positive": int(y.sum()), "folds": folds, "repeats": repeats,
        "seed": seed, "threshold": threshold, "n_boot": n_boot, "tiny": tiny,
        "data_description": table.description, "synthetic": table.synthetic, "source": table.source,
        "cv": main, "comparators": comparators, "published": p.published, "versions": library_versions(),
        "notes": [],
    }
    risk = table.true_risk.get(target)
    if risk is not None and np.isfinite(risk[rows]).all():
        from sklearn.metrics import roc_auc_score

        result["oracle_auc"] = oracle_auc(risk[rows])
        result["true_risk_auc_observed"] = float(roc_auc_score(y, risk[rows]))
        result["notes"].append(
            "Oracle AUC = expected AUC of the true (generator) risks on these patients, "
            f"{result['oracle_auc']:.3f}; the true risks scored against the drawn outcomes give "
            f"{result['true_risk_auc_observed']:.3f}.")
    if table.synthetic:
        result["notes"].append("Fit on synthetic data (dicomnode.lab.synth); not clinically validated.")
    if tiny:
        result["notes"].append("tiny deep settings: CNN width 4, 4 epochs, 2-fold cross-fitting, smaller "
                               "grids (for tests and for CPU-only runs on small machines).")
    model = None
    if out is not None:
        model = fit_final(preset, X, y, names, seed=seed, tiny=tiny)
        if progress is not None:
            progress(f"{preset}: final fit", 1, 1)
    result["seconds"] = time.perf_counter() - t0
    if out is not None:
        write_outputs(result, model, names, Path(out))
    return result


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The metrics that go into model.json and the docs table (value and 95% CI)."""
    m = result["cv"]["metrics"]
    out: dict[str, Any] = {k: {"value": m[k]["value"], "ci95": [m[k]["ci_low"], m[k]["ci_high"]]}
           for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1",
                     "average_precision", "brier")}
    out["calibration"] = result["cv"]["calibration"]
    out["validation"] = (f"stratified {result['folds']}-fold CV x {result['repeats']} repeats, seed "
                         f"{result['seed']}, threshold {result['threshold']}")
    out["n_cases"], out["n_positive"] = result["n_cases"], result["n_positive"]
    if "oracle_auc" in result:
        out["oracle_auc"] = result["oracle_auc"]
    return jsonable(out)


def write_outputs(result: dict[str, Any], model, names: list[str], out: Path) -> None:
    """Bundle (skops via dicomnode.predict.bundle), report.html, MODEL_CARD.md, validation.json."""
    from dicomnode.lab.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    what = "haematoma expansion" if result["target"] == "he" else "post-stroke epilepsy"
    intended = (f"Research use: estimate the risk of {what} "
                "from the admission NCCT (and clinical variables where the preset uses them). "
                "Not a medical device.")
    if result["synthetic"]:
        intended += " Fit on synthetic data; not clinically validated."
    meta = {
        "preset": result["preset"], "method": result["method"], "summary": result["summary"],
        "target": result["target"], "training_data": result["data_description"],
        "synthetic_training": result["synthetic"], "metrics": headline(result),
        "intended_use": intended, "versions": result["versions"], "threshold": result["threshold"],
    }
    shape = image_shape_of(names)
    if shape is not None:
        meta["image_input"] = {"shape": list(shape), "columns": f"img_c{shape[0]}x{shape[1]}x{shape[2]}_<i>",
                               "source": "dicomnode.predict.lesion_slices.deep_slices(mask_channel=True), "
                                         "see dicomnode.predict.image_features.ImageSpec"}
    _save_bundle(model, names, out, meta)
    write_report(result, out / "report.html")
    (out / "validation.json").write_text(json.dumps(jsonable(_strip(result)), indent=1) + "\n")
    write_model_card(result, out / "MODEL_CARD.md")


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    """The result without the long curves (kept in the report)."""
    r = dict(result)
    r["cv"] = {k: v for k, v in result["cv"].items() if k != "curves"}
    r["comparators"] = {k: {kk: vv for kk, vv in v.items() if kk != "curves"}
                        for k, v in result["comparators"].items()}
    return r


def _save_bundle(model, names: list[str], out: Path, meta: dict[str, Any]) -> None:
    from dicomnode.predict.bundle import save_predictor
    from dicomnode.predict.estimators import TRUSTED_TYPES
    from dicomnode.predict.radiomics_features import DEFAULT_RADIOMICS_PARAMS

    rad = meta.pop("radiomics_params", None) or DEFAULT_RADIOMICS_PARAMS
    save_predictor(
        out, model, name=f"{meta['target']}-{meta['preset']}", version=str(meta.pop("version", "1")),
        target=meta["target"], preset=meta["preset"], feature_names=names,
        training_data=meta["training_data"], metrics=meta["metrics"],
        synthetic_training=bool(meta["synthetic_training"]), calibration=meta["metrics"].get("calibration"),
        intended_use=meta["intended_use"],
        radiomics_params=Path(rad) if any(n.startswith("rad_") for n in names) else None,
        extra={k: v for k, v in meta.items() if k not in ("metrics", "training_data", "intended_use")},
        extra_trusted=TRUSTED_TYPES, overwrite=True)


def _ci(m: dict[str, float]) -> str:
    def f(v: float) -> str:
        return f"{v:.3f}" if v is not None and math.isfinite(v) else "n/a"

    return f"{f(m['value'])} ({f(m['ci_low'])}–{f(m['ci_high'])})"


def write_model_card(result: dict[str, Any], path: Path) -> Path:
    """MODEL_CARD.md: what the model is, the data it was fit on, its metrics, intended use."""
    m = result["cv"]["metrics"]
    target = {"he": "haematoma expansion (HE)", "pse": "post-stroke epilepsy (PSE)"}[result["target"]]
    lines = [
        f"# {result['target'].upper()} model: preset `{result['preset']}` (method {result['method']})",
        "",
    ]
    if result["synthetic"]:
        lines += ["**Fit on synthetic data; not clinically validated.** Do not use for patient care.", ""]
    lines += [
        f"Predicts the probability of {target} after spontaneous ICH from the admission NCCT: "
        f"{result['summary']}.",
        "",
        "## Data",
        f"- {result['data_description']}",
        f"- {result['n_cases']} cases, {result['n_positive']} positive.",
        "",
        "## Validation",
        f"Stratified {result['folds']}-fold cross-validation repeated {result['repeats']} times (seed "
        f"{result['seed']}); every model, its deep parts included, was fit on the training part of "
        f"each fold only. 95% CIs: stratified bootstrap ({result['n_boot']} replicates) of the "
        f"out-of-fold predictions. Threshold {result['threshold']}.",
        "",
        "| metric | value (95% CI) |",
        "|---|---|",
    ]
    lines += [f"| {k.replace('_', ' ')} | {_ci(m[k])} |" for k in
              ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "average_precision",
               "brier")]
    cal = result["cv"]["calibration"]
    lines += ["", f"Calibration intercept {cal['intercept']:.3f}, slope {cal['slope']:.3f}, "
              f"ECE {cal['ece']:.3f}."]
    if "oracle_auc" in result:
        gap = result["oracle_auc"] - m["auc"]["value"]
        lines += ["", f"Oracle AUC (true risks of the synthetic generator, same patients): "
                  f"{result['oracle_auc']:.3f}; gap {gap:.3f}."]
    if result["comparators"]:
        lines += ["", "Comparators (same folds): " + "; ".join(
            f"`{k}` AUC {_ci(v['metrics']['auc'])}" for k, v in result["comparators"].items())]
    extra = result.get("held_out")
    if extra:
        lines += ["", "## Held-out evaluation", "", extra]
    lines += [
        "", "## Intended use",
        "Research and method development: a department retrains this preset on its own "
        "retrospective cohort (`dicomnode train he|pse --cohort ... --preset ...`) and reads the "
        "report before any use. Not a medical device; not for diagnosis or treatment decisions.",
        "", "## Files",
        "model.json and the skops file (the bundle: feature names and order, versions); "
        "report.html (ROC, PR, calibration, decision curve); validation.json (all numbers).",
        "", f"Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}.", "",
    ]
    path.write_text("\n".join(lines))
    return path
