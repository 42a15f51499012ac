"""`dicomnode validate he|pse`: a served model scored on the department's own outcomes.

Inputs: a model bundle (by default the one the node serves: ``[prediction] he_model`` or
``pse_model``, the shipped bundles unless configured) and the department's cohort as a
:class:`~dicomnode.lab.cohort_table.CohortTable` (from the node's database or a feature cohort
written by ``dicomnode cohort export``). Outputs: the result dict (AUC with a bootstrap CI,
calibration intercept, slope and plot, Brier score and the other metrics of
:func:`dicomnode.lab.metrics.summarize`, numbers of patients and events, warnings) and, with
``out``, ``report.html`` in the training report's format and ``validation.json``. Side effects:
writes ``out``.

The model is scored as it is, without refitting (an external validation of the served model).
A cohort with fewer than ``min_events`` events or non-events gets a warning on the page and in
the result: Collins, Ogundimu & Altman (Stat Med 2016;35:214-26) recommend at least 100 of each
for a validation study.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.lab.cohort_table import CohortTable
from dicomnode.lab.report import write_report
from dicomnode.lab.train_predictor import evaluate, library_versions
from dicomnode.predict.bundle import Predictor
from dicomnode.predict.bundle_checks import jsonable

__all__ = ["MIN_EVENTS", "recorded_agreement", "score", "validate_model", "write_validation"]

MIN_EVENTS = 100  # of each class (Collins et al. 2016)
TARGETS = {"he": "haematoma expansion", "pse": "post-stroke epilepsy"}


def score(predictor: Predictor, table: CohortTable, target: str
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(outcomes, the model's probabilities, row indices, model features the table lacks)."""
    X, y, rows = table.target(target)
    have = set(table.names)
    missing = [n for n in predictor.feature_names if n not in have]
    if any(n.startswith("img_") for n in missing):
        raise ValueError(
            f"model {predictor.name} {predictor.version} needs image columns (img_*) that the "
            f"cohort {table.source} lacks: the node records the features of the models it "
            "serves, so this model can be validated only on outcomes recorded while it (or "
            "another image model) was served")
    rows_features = [dict(zip(table.names, X[i].tolist(), strict=True)) for i in range(len(y))]
    return y, predictor.predict_proba_many(rows_features), rows, missing


def recorded_agreement(predictor: Predictor, table: CohortTable, target: str, p: np.ndarray,
                       rows: np.ndarray) -> dict[str, Any]:
    """How far ``p`` is from the risks the node recorded for the cases it scored with this
    very model (name and version; ``cases.csv`` of a feature cohort): ``{"n", "max_abs_diff"}``.
    The recorded risks are rounded to 4 decimals."""
    cases = Path(table.source) / "cases.csv"
    if not cases.is_file():
        return {"n": 0, "max_abs_diff": None}
    with cases.open(newline="", encoding="utf-8") as f:
        recorded = {r["case_id"]: r for r in csv.DictReader(f)}
    diffs = []
    for value, i in zip(p.tolist(), rows.tolist(), strict=True):
        r = recorded.get(table.ids[i], {})
        if (r.get(f"{target}_model"), r.get(f"{target}_model_version")) == (
                predictor.name, predictor.version) and r.get(f"{target}_probability"):
            diffs.append(abs(value - float(r[f"{target}_probability"])))
    return {"n": len(diffs), "max_abs_diff": max(diffs) if diffs else None}


def validate_model(predictor: Predictor, table: CohortTable, target: str, *,
                   threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                   min_events: int = MIN_EVENTS) -> dict[str, Any]:
    """Score ``predictor`` on the cases of ``table`` whose ``target`` outcome is known."""
    if target not in TARGETS:
        raise ValueError(f"target must be 'he' or 'pse', got {target!r}")
    if predictor.target != target:
        raise ValueError(f"model {predictor.name} predicts {predictor.target!r}, not {target!r}")
    t0 = time.perf_counter()
    y, p, rows, missing = score(predictor, table, target)
    events, non_events = int(y.sum()), int(len(y) - y.sum())
    if events == 0 or non_events == 0:
        raise ValueError(f"{len(y)} cases with a known {target} outcome, {events} of them "
                         "events: a validation needs both events and non-events")
    patients = len({table.patients[i] for i in rows}) if table.patients else len(rows)
    warnings = []
    if min(events, non_events) < min_events:
        warnings.append(
            f"Too small for a reliable validation: {events} events and {non_events} non-events "
            f"in {patients} patients, below the minimum of {min_events} of each (Collins et al., "
            "Stat Med 2016). The confidence intervals are wide and the calibration slope is "
            "unstable: do not act on these figures.")
    notes = []
    if missing:
        notes.append(f"{len(missing)} of the model's {len(predictor.feature_names)} features were "
                     f"not recorded and were imputed by the model: {', '.join(missing[:8])}"
                     + (" ..." if len(missing) > 8 else ""))
    agreement = recorded_agreement(predictor, table, target, p, rows)
    if agreement["n"]:
        notes.append(f"The node served this model to {agreement['n']} of these cases: its "
                     f"recorded risks and the ones scored here differ by at most "
                     f"{agreement['max_abs_diff']:.2g}.")
    main = evaluate(y, p, threshold=threshold, n_boot=n_boot, seed=seed)
    main["repeat_auc"] = []
    return {
        "kind": "validation", "target": target, "preset": predictor.preset,
        "method": str(predictor.metadata.get("method", "")),
        "model": predictor.name, "model_version": predictor.version,
        "model_folder": str(predictor.folder),
        "summary": f"model {predictor.name} version {predictor.version} ({predictor.folder}), "
                   "scored as served, without refitting",
        "n_cases": len(y), "n_patients": patients, "n_positive": events,
        "recorded_agreement": agreement, "threshold": threshold, "n_boot": n_boot, "seed": seed,
        "folds": 0, "repeats": 0,
        "data_description": table.description, "synthetic": predictor.synthetic_training,
        "source": table.source, "cv": main, "comparators": {}, "published": {},
        "versions": library_versions(), "notes": notes, "warnings": warnings,
        "title": f"{target.upper()} model validation: {predictor.name} {predictor.version}",
        "validation_text": (
            f"External validation on the department's own outcomes: {len(y)} cases of "
            f"{patients} patients, {events} with {TARGETS[target]}. The model's probabilities "
            f"are scored as they are; 95% CIs by stratified bootstrap ({n_boot} replicates). "
            f"Threshold {threshold:g}."),
        "metrics_heading": "Metrics on the department's outcomes",
        "confusion_note": "all cases",
        "seconds": time.perf_counter() - t0,
    }


def write_validation(result: dict[str, Any], out: Path) -> Path:
    """``out/report.html`` (the training report's format) and ``out/validation.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(result, out / "report.html")
    stripped = {**result, "cv": {k: v for k, v in result["cv"].items() if k != "curves"}}
    (out / "validation.json").write_text(json.dumps(jsonable(stripped), indent=1) + "\n")
    return out / "report.html"
