"""Validation metrics for binary risk models (HE, PSE): point estimates, bootstrap CIs, curves.

Inputs: outcomes ``y`` (0/1) and predicted probabilities ``p``. Outputs: plain dicts and
arrays (JSON-ready). Side effects: none. Definitions follow scikit-learn where it has one
(``roc_auc_score``, ``average_precision_score``, ``brier_score_loss``); net benefit follows
Vickers & Elkin (Med Decis Making 2006): NB(t) = TP/n - FP/n * t / (1 - t).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "METRIC_NAMES",
    "binary_metrics",
    "bootstrap_ci",
    "calibration_curve",
    "calibration_intercept_slope",
    "confusion",
    "decision_curve",
    "oracle_auc",
    "pr_points",
    "roc_points",
    "summarize",
]

METRIC_NAMES = (
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "average_precision",
    "brier",
)


def _check(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y and p differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("no cases")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold 0/1 outcomes")
    if not np.isfinite(p).all():
        raise ValueError("p holds NaN or infinite values")
    return y, p


def confusion(y: ArrayLike, p: ArrayLike, threshold: float = 0.5) -> dict[str, int]:
    """Counts at ``threshold`` (a case is called positive when p >= threshold)."""
    y, p = _check(y, p)
    pred = p >= threshold
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
        "tn": int(np.sum(~pred & (y == 0))),
    }


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def binary_metrics(y: ArrayLike, p: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, sensitivity, specificity, precision, F1, AP and Brier score.

    Threshold metrics call a case positive when ``p >= threshold``. AUC and AP are NaN when
    only one class is present; precision is NaN when nothing is called positive.
    """
    y, p = _check(y, p)
    c = confusion(y, p, threshold)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    both = 0 < y.sum() < y.size
    sens = _ratio(tp, tp + fn)
    prec = _ratio(tp, tp + fp)
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "accuracy": (tp + tn) / y.size,
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "precision": prec,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
    }


def bootstrap_ci(
    y: ArrayLike,
    p: ArrayLike,
    fn: Callable[[np.ndarray, np.ndarray], float] | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``fn(y, p)`` (default: AUC), resampling within each class.

    Stratified resampling keeps both classes in every replicate, so the AUC is always defined.
    """
    y, p = _check(y, p)
    fn = fn or (lambda yy, pp: float(roc_auc_score(yy, pp)))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        vals[b] = fn(y[idx], p[idx])
    vals = vals[np.isfinite(vals)]
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2]) if vals.size else (np.nan, np.nan)
    return float(lo), float(hi)


def summarize(
    y: ArrayLike,
    p: ArrayLike,
    threshold: float = 0.5,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Every metric of :func:`binary_metrics` with a stratified bootstrap CI.

    Returns ``{name: {"value", "ci_low", "ci_high"}}``; all metrics share the same replicates.
    """
    y, p = _check(y, p)
    point = binary_metrics(y, p, threshold)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    out = {k: {"value": v, "ci_low": float("nan"), "ci_high": float("nan")} for k, v in point.items()}
    if pos.size == 0 or neg.size == 0 or n_boot < 1:
        return out
    rng = np.random.default_rng(seed)
    reps = {k: np.empty(n_boot) for k in point}
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        for k, v in _fast_metrics(y[idx], p[idx], threshold).items():
            reps[k][b] = v
    for k, vals in reps.items():
        vals = vals[np.isfinite(vals)]
        if vals.size:
            lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
            out[k]["ci_low"], out[k]["ci_high"] = float(lo), float(hi)
    return out


def _fast_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """binary_metrics without input checks (bootstrap inner loop)."""
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    tn = float(np.sum(~pred & (y == 0)))
    return {
        "auc": _auc_rank(y, p),
        "accuracy": (tp + tn) / y.size,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "average_precision": float(average_precision_score(y, p)),
        "brier": float(np.mean((p - y) ** 2)),
    }


def _auc_rank(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC with midranks for ties (equals roc_auc_score)."""
    from scipy.stats import rankdata

    r = rankdata(p)
    n1 = y.sum()
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_points(y: ArrayLike, p: ArrayLike) -> dict[str, list[float]]:
    """ROC curve (false positive rate, true positive rate)."""
    y, p = _check(y, p)
    fpr, tpr, _ = roc_curve(y, p)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def pr_points(y: ArrayLike, p: ArrayLike) -> dict[str, list[float]]:
    """Precision-recall curve (recall ascending) and the prevalence (no-skill line)."""
    y, p = _check(y, p)
    prec, rec, _ = precision_recall_curve(y, p)
    return {"recall": rec[::-1].tolist(), "precision": prec[::-1].tolist(), "prevalence": float(y.mean())}


def calibration_curve(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> dict[str, list[float] | list[int]]:
    """Reliability diagram on quantile bins: mean predicted vs observed rate, with counts.

    Quantile bins keep every bin populated when risks are skewed (PSE risks are mostly small).
    Also returns the expected calibration error (``ece``, count-weighted |observed - predicted|).
    """
    y, p = _check(y, p)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    if edges.size < 2:
        edges = np.array([p.min(), p.max() + 1e-12])
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, edges.size - 2)
    pred: list[float] = []
    obs: list[float] = []
    cnt: list[int] = []
    for b in range(edges.size - 1):
        m = idx == b
        if m.any():
            pred.append(float(p[m].mean()))
            obs.append(float(y[m].mean()))
            cnt.append(int(m.sum()))
    w = np.asarray(cnt) / y.size
    ece = float(np.sum(w * np.abs(np.asarray(obs) - np.asarray(pred))))
    return {"predicted": pred, "observed": obs, "count": cnt, "ece": [ece]}


def calibration_intercept_slope(y: ArrayLike, p: ArrayLike) -> dict[str, float]:
    """Logistic recalibration: logit P(y) = a + b logit(p). Ideal: a = 0, b = 1.

    ``intercept`` is calibration-in-the-large with the slope fixed at 1 (offset model).
    """
    from dicomnode.lab.synth.cohort import fit_logistic

    y, p = _check(y, p)
    lp = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
    try:
        beta, _ = fit_logistic(lp[:, None], y.astype(float))
        slope = float(beta[1])
    except np.linalg.LinAlgError:
        slope = float("nan")
    a = 0.0
    for _ in range(50):  # Newton on the intercept with offset lp
        q = 1 / (1 + np.exp(-(a + lp)))
        g, h = float(np.sum(y - q)), float(np.sum(q * (1 - q)))
        if h <= 0:
            break
        a += g / h
        if abs(g / h) < 1e-10:
            break
    return {"intercept": float(a), "slope": slope}


def decision_curve(
    y: ArrayLike, p: ArrayLike, thresholds: ArrayLike | None = None
) -> dict[str, list[float]]:
    """Net benefit of the model, of treating all and of treating none, per threshold."""
    y, p = _check(y, p)
    t = np.asarray(thresholds if thresholds is not None else np.linspace(0.01, 0.8, 80), dtype=float)
    n = y.size
    prev = y.mean()
    model, all_ = [], []
    for th in t:
        pred = p >= th
        tp = np.sum(pred & (y == 1)) / n
        fp = np.sum(pred & (y == 0)) / n
        w = th / (1 - th)
        model.append(float(tp - fp * w))
        all_.append(float(prev - (1 - prev) * w))
    return {"threshold": t.tolist(), "model": model, "treat_all": all_, "treat_none": [0.0] * t.size}


def oracle_auc(p_true: ArrayLike) -> float:
    """Bayes-optimal AUC of the true risks (expected over outcome draws; synthetic cohorts)."""
    from dicomnode.lab.synth.cohort import expected_auc

    return expected_auc(np.asarray(p_true, dtype=float))
