"""Metrics match scikit-learn on known inputs; bootstrap CIs bracket the point estimate."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from dicomnode.lab import metrics as M


@pytest.fixture(scope="module")
def yp():
    rng = np.random.default_rng(0)
    p_true = rng.beta(2, 5, 400)
    y = (rng.random(400) < p_true).astype(int)
    p = np.clip(p_true + rng.normal(0, 0.1, 400), 0.001, 0.999)
    return y, p


def test_binary_metrics_match_sklearn(yp):
    y, p = yp
    for thr in (0.3, 0.5):
        m = M.binary_metrics(y, p, thr)
        pred = (p >= thr).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
        assert m["auc"] == pytest.approx(roc_auc_score(y, p))
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["precision"] == pytest.approx(precision_score(y, pred))
        assert m["f1"] == pytest.approx(f1_score(y, pred))
        assert m["average_precision"] == pytest.approx(average_precision_score(y, p))
        assert m["brier"] == pytest.approx(brier_score_loss(y, p))
        assert M.confusion(y, p, thr) == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def test_known_small_case():
    y = [0, 0, 1, 1]
    p = [0.1, 0.6, 0.4, 0.9]
    m = M.binary_metrics(y, p, 0.5)
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)


def test_rank_auc_with_ties_equals_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = rng.integers(0, 5, 300) / 4.0  # many ties
    assert M._auc_rank(y, p) == pytest.approx(roc_auc_score(y, p))


def test_bootstrap_ci_brackets_point(yp):
    y, p = yp
    auc = roc_auc_score(y, p)
    lo, hi = M.bootstrap_ci(y, p, n_boot=300, seed=0)
    assert lo < auc < hi and hi - lo < 0.2
    s = M.summarize(y, p, 0.5, n_boot=300, seed=0)
    for name in M.METRIC_NAMES:
        v = s[name]
        assert v["ci_low"] <= v["value"] <= v["ci_high"], name
    assert s["auc"]["value"] == pytest.approx(auc)


def test_calibration_and_decision_curve(yp):
    y, p = yp
    cal = M.calibration_curve(y, p, n_bins=5)
    assert sum(cal["count"]) == len(y) and len(cal["predicted"]) == 5
    assert np.all(np.diff(cal["predicted"]) > 0)
    cis = M.calibration_intercept_slope(y, p)
    assert abs(cis["intercept"]) < 0.5 and 0.5 < cis["slope"] < 1.5
    dca = M.decision_curve(y, p, [0.1, 0.2])
    prev = np.mean(y)
    assert dca["treat_all"][0] == pytest.approx(prev - (1 - prev) * 0.1 / 0.9)
    tp = np.sum((p >= 0.2) & (y == 1)) / len(y)
    fp = np.sum((p >= 0.2) & (y == 0)) / len(y)
    assert dca["model"][1] == pytest.approx(tp - fp * 0.25)
    assert dca["treat_none"] == [0.0, 0.0]


def test_curves_and_oracle():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.3, 0.35, 0.8, 0.5, 0.9])
    roc = M.roc_points(y, p)
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1
    pr = M.pr_points(y, p)
    assert pr["prevalence"] == pytest.approx(0.5) and pr["recall"][0] == 0
    from dicomnode.lab.synth.cohort import expected_auc

    risk = np.array([0.1, 0.2, 0.2, 0.7])
    assert M.oracle_auc(risk) == pytest.approx(expected_auc(risk))


def test_input_checks():
    with pytest.raises(ValueError, match="differ in length"):
        M.binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        M.binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.binary_metrics([0, 1], [0.1, np.nan])
    m = M.binary_metrics([1, 1], [0.2, 0.9])
    assert np.isnan(m["auc"]) and np.isnan(m["specificity"])
