"""Served HE/PSE models on a held-out synthetic cohort, against the oracle AUC of the true risks.

The cohort is one `dicomnode synth cohort` never used in training (default: 2,000 patients,
seed 42, matrix 64, 5 mm, the same rendering as the training cohort); features are computed as
for training and cached next to it. Each model bundle is loaded with ``load_predictor`` and
scored with ``Predictor.predict_proba_many``, as the node serves it. Prints one row per model:
AUC with its 95% bootstrap CI, the oracle AUC (expected, and on the drawn outcomes), the gap with
a paired-bootstrap CI, and calibration. ``--card`` also writes the figures into each model card.

    .venv/bin/python bench/heldout_predict.py models/he-multitask-he models/pse-psenet --card
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

SECTION = "## Held-out evaluation"


def evaluate(model_dir: Path, table, threshold: float | None = None) -> dict:
    """Figures of one served bundle on the cohort's feature table."""
    from dicomnode.predict.bundle import load_predictor
    from dicomnode.predict.estimators import TRUSTED_TYPES

    pred = load_predictor(model_dir, extra_trusted=TRUSTED_TYPES)
    X, y, rows = table.target(pred.target)
    p = pred.predict_proba_many([dict(zip(table.names, r, strict=True)) for r in X])
    if threshold is None:
        threshold = float(pred.metadata.get("extra", {}).get("threshold", 0.5))
    return {"model": str(model_dir), "target": pred.target,
            **score(y, p, table.true_risk[pred.target][rows], threshold)}


def score(y: np.ndarray, p: np.ndarray, risk: np.ndarray, threshold: float) -> dict:
    """Metrics with CIs, oracle AUC of the true risks, the gap (paired bootstrap), calibration."""
    from dicomnode.lab.metrics import (
        calibration_curve,
        calibration_intercept_slope,
        oracle_auc,
        summarize,
    )

    metrics = summarize(y, p, threshold, n_boot=1000, seed=0)
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    gaps = []
    for _ in range(1000):  # paired: the same resampled patients for model and true risk
        i = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        gaps.append(roc_auc_score(y[i], risk[i]) - roc_auc_score(y[i], p[i]))
    auc = metrics["auc"]["value"]
    return {"n": int(len(y)), "positives": int(y.sum()), "threshold": threshold,
            "metrics": metrics, "oracle_auc_expected": oracle_auc(risk),
            "true_risk_auc_observed": float(roc_auc_score(y, risk)),
            "gap_expected": oracle_auc(risk) - auc,
            "gap_observed": float(roc_auc_score(y, risk)) - auc,
            "gap_observed_ci95": [float(np.quantile(gaps, 0.025)),
                                  float(np.quantile(gaps, 0.975))],
            "calibration": {**calibration_intercept_slope(y, p),
                            "ece": calibration_curve(y, p)["ece"][0],
                            "mean_predicted": float(p.mean()), "observed_rate": float(y.mean())}}


def fit_presets(train_table, heldout, presets: list[str], *, tiny: bool) -> list[dict]:
    """Fit each preset on the whole training cohort (no CV) and score it on the held-out one."""
    from dicomnode.lab.predictor_presets import build_preset

    if list(train_table.names) != list(heldout.names):
        raise ValueError("training and held-out feature tables have different columns")
    out = []
    for target, threshold in (("he", 0.3), ("pse", 0.1)):
        X, y, _ = train_table.target(target)
        Xh, yh, rows = heldout.target(target)
        for name in presets:
            t = time.perf_counter()
            est = build_preset(name, train_table.names, seed=0, tiny=tiny).fit(X, y)
            p = est.predict_proba(Xh)[:, 1]
            out.append({"model": f"{target}-{name} (fit here)", "target": target,
                        "fit_s": round(time.perf_counter() - t, 1),
                        **score(yh, p, heldout.true_risk[target][rows], threshold)})
            print(f"  {target} {name}: AUC {out[-1]['metrics']['auc']['value']:.3f}", flush=True)
    return out


def card_section(rec: dict, cohort: str) -> str:
    """Markdown for the model card."""
    m, c = rec["metrics"], rec["calibration"]

    def f(k: str) -> str:
        return f"{m[k]['value']:.3f} ({m[k]['ci_low']:.3f}–{m[k]['ci_high']:.3f})"

    rows = "\n".join(f"| {label} | {f(k)} |" for label, k in (
        ("AUC", "auc"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
        ("F1", "f1"), ("average precision", "average_precision"), ("Brier", "brier")))
    lo, hi = rec["gap_observed_ci95"]
    return (f"\n\n{SECTION} (served bundle)\n\nHeld-out synthetic cohort {cohort}: {rec['n']} "
            f"patients ({rec['positives']} positive), never used in training; features computed "
            "as for training; the bundle loaded with `load_predictor` and scored with "
            f"`Predictor.predict_proba_many` (`bench/heldout_predict.py`). Threshold "
            f"{rec['threshold']:g}.\n\n| metric | value (95% CI) |\n|---|---|\n{rows}\n\n"
            f"Oracle AUC (true risks, same patients): expected {rec['oracle_auc_expected']:.3f}, "
            f"on the drawn outcomes {rec['true_risk_auc_observed']:.3f}. Gap (oracle − model): "
            f"{rec['gap_expected']:.3f} expected, {rec['gap_observed']:.3f} on the drawn outcomes "
            f"(paired bootstrap 95% CI {lo:.3f} to {hi:.3f}).\nCalibration: mean predicted "
            f"{c['mean_predicted']:.3f} vs observed {c['observed_rate']:.3f}; intercept "
            f"{c['intercept']:.3f}, slope {c['slope']:.3f}, ECE {c['ece']:.3f}.\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="served model bundles")
    ap.add_argument("--presets", default="", help="also fit these presets (comma-separated) on "
                    "--train-cohort and score them the same way")
    ap.add_argument("--train-cohort", type=Path, default=Path("var/cohorts/train-s41-n1000-m64"))
    ap.add_argument("--tiny", action="store_true", help="tiny deep settings (as the reference "
                    "models were fit)")
    ap.add_argument("--cohort", type=Path, default=Path("var/cohorts/heldout-s42-n2000-m64"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--card", action="store_true", help="write the figures into MODEL_CARD.md")
    ap.add_argument("--json", type=Path, help="also write all figures to this file")
    args = ap.parse_args()
    from dicomnode.lab.cohort_table import build_table, load_cohort, synthetic_cases
    from dicomnode.lab.synth.cohort_io import make_cohort

    t = time.perf_counter()
    if not (args.cohort / "manifest.csv").is_file():  # resumes an interrupted render
        make_cohort(args.cohort, args.n, seed=args.seed, matrix=args.matrix, thickness_mm=5)
    cases = synthetic_cases(args.cohort, args.n, args.seed)
    table = build_table(cases, cache_dir=args.cohort / ".features", synthetic=True)
    print(f"cohort {args.cohort}: {len(cases)} patients, features in "
          f"{time.perf_counter() - t:.0f} s")
    described = f"`make_cohort(n={args.n}, seed={args.seed}, matrix={args.matrix}, thickness_mm=5)`"
    out = [evaluate(model_dir, table) for model_dir in args.models]
    if args.presets:
        train_table = load_cohort(args.train_cohort)
        out += fit_presets(train_table, table, args.presets.split(","), tiny=args.tiny)
    print("| model | n (pos) | AUC (95% CI) | oracle expected / drawn | gap expected / drawn "
          "(95% CI) | sensitivity | specificity | F1 | AP | calibration intercept, slope, ECE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rec in out:
        m, c = rec["metrics"], rec["calibration"]
        lo, hi = rec["gap_observed_ci95"]

        def f(k: str, m: dict = m) -> str:
            return f"{m[k]['value']:.3f} ({m[k]['ci_low']:.3f}–{m[k]['ci_high']:.3f})"

        print(f"| {Path(rec['model']).name} | {rec['n']} ({rec['positives']}) | {f('auc')} | "
              f"{rec['oracle_auc_expected']:.3f} / {rec['true_risk_auc_observed']:.3f} | "
              f"{rec['gap_expected']:.3f} / {rec['gap_observed']:.3f} ({lo:.3f} to {hi:.3f}) | "
              f"{f('sensitivity')} | {f('specificity')} | {f('f1')} | "
              f"{f('average_precision')} | {c['intercept']:.2f}, {c['slope']:.2f}, "
              f"{c['ece']:.3f} |")
    if args.card:
        for rec in out[: len(args.models)]:
            card = Path(rec["model"]) / "MODEL_CARD.md"
            text = card.read_text(encoding="utf-8")
            if f"\n\n{SECTION}" in text:
                text = text[: text.index(f"\n\n{SECTION}")]
            card.write_text(text + card_section(rec, described), encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
