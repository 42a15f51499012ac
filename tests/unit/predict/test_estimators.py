"""The estimator classes that shipped bundles hold (served, so tested beside serving)."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.predict import estimators as E
from dicomnode.predict.cnn import platt_scaling, synthesize_variants


def test_synthetic_variants_and_lasso():
    rng = np.random.default_rng(0)
    img = np.zeros((2, 3, 16, 16), np.float32)
    img[:, :2] = 0.4
    img[:, 2, 5:11, 5:11] = 1
    out = synthesize_variants(img, 5, rng)
    assert out.shape == (10, 3, 16, 16)
    assert set(np.unique(out[:, 2])) <= {0.0, 1.0} and out[:, 2].sum() > 0
    X = rng.normal(size=(120, 6))
    y = (X[:, 0] + 0.1 * rng.normal(size=120) > 0).astype(int)
    sel = E.LassoSelector(cv=3).fit(X, y)
    assert sel.support_[0] and sel.transform(X).shape[1] >= 3


def test_cut_indicators():
    cut = E.CutIndicators((("gt", 10.0), ("lt", 65.0))).fit(np.zeros((1, 2)))
    X = np.array([[12.0, 70.0], [10.0, 64.0], [np.nan, np.nan], [3.0, 40.0]])
    assert cut.transform(X).tolist() == [[1, 0], [0, 1], [0, 0], [0, 1]]
    with pytest.raises(ValueError, match="operator"):
        E.CutIndicators((("ge", 1.0),)).fit(X)


def test_trusted_types_name_serving_modules_only():
    assert all(t.startswith(("dicomnode.predict.", "sklearn.")) for t in E.TRUSTED_TYPES)


def test_platt_scaling_never_inverts_the_ranking():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.2).astype(int)
    good = y * 2.0 + rng.normal(0, 1, 200)
    slope, _ = platt_scaling(good, y)
    assert slope > 0.5
    slope, intercept = platt_scaling(-good, y)  # anti-correlated on this validation part
    assert 0 < slope <= 1e-3
    p = 1 / (1 + np.exp(-(slope * -good + intercept)))
    assert p.mean() == pytest.approx(y.mean(), abs=0.01)
    assert np.all(np.diff(p[np.argsort(-good)]) >= 0)  # the network's order is kept
