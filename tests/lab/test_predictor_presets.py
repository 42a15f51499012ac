"""Every preset trains on a small synthetic cohort (tiny settings) and ranks its held-out part.

The cohort (cohort.toy_cohort) uses the synthetic cohort model with enriched outcome effects,
so that the oracle AUC of the true risks is above 0.8 on a few hundred patients.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score

from dicomnode.lab import predictor_presets as P
from dicomnode.lab import train_predictor as T
from dicomnode.lab.cohort_table import toy_cohort
from dicomnode.lab.metrics import oracle_auc

MAIN = ("psenet", "multitask-he", "resnet-lasso-svm", "efficientnet-synth", "hybrid-kbest-svm")
TARGET = {"psenet": "pse", "multitask-he": "he", "resnet-lasso-svm": "he", "efficientnet-synth": "pse",
          "hybrid-kbest-svm": "he"}


@pytest.fixture(scope="module")
def cohorts():
    return toy_cohort(200, seed=11), toy_cohort(200, seed=12)


# EfficientNet-B0 is the heaviest network (about 4 M parameters) even at tiny settings.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.timeout(900)) if n == "efficientnet-synth"
                                  else n for n in MAIN])
def test_preset_ranks_held_out_part(name, cohorts):
    train, test = cohorts
    target = TARGET[name]
    X, y, _ = train.target(target)
    Xt, yt, rows = test.target(target)
    assert oracle_auc(test.true_risk[target][rows]) >= 0.8
    est = P.build_preset(name, train.names, seed=0, tiny=True).fit(X, y)
    p = est.predict_proba(Xt)[:, 1]
    assert np.all((p >= 0) & (p <= 1))
    auc = roc_auc_score(yt, p)
    assert auc >= 0.65, f"{name} {target}: held-out AUC {auc:.3f}"
    # missing values are explicit: a row of NaN still gets a probability
    assert 0 <= est.predict_proba(np.full((1, Xt.shape[1]), np.nan))[0, 1] <= 1


@pytest.mark.parametrize("name", ["psenet-clinical-rf", "multitask-he-clinical"])
def test_tabular_comparators_fit(name, cohorts):
    train, test = cohorts
    tab, tab_t = train.without_images(), test.without_images()
    X, y, _ = tab.target("he")
    Xt, yt, _ = tab_t.target("he")
    est = P.build_preset(name, tab.names, tiny=True).fit(X, y)
    assert roc_auc_score(yt, est.predict_proba(Xt)[:, 1]) > 0.6


def test_registry_and_errors(cohorts):
    assert set(MAIN) <= set(P.PRESETS)
    for name in MAIN:
        preset = P.get_preset(name)
        assert preset.uses_images and preset.published and preset.method in "ABCDE"
    with pytest.raises(ValueError, match="unknown preset"):
        P.get_preset("nope")
    with pytest.raises(ValueError, match="image columns"):
        P.build_preset("psenet", cohorts[0].without_images().names)
    assert P.image_shape_of(cohorts[0].names) == (3, 16, 16)


class _Spy(BaseEstimator, ClassifierMixin):
    """Records the rows it was fit on (row ids are in column 0)."""

    seen: list = []

    def fit(self, X, y):
        type(self).seen.append(set(X[:, 0].astype(int)))
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        type(self).seen_test = set(X[:, 0].astype(int))
        p = np.full(len(X), 0.5)
        return np.column_stack([1 - p, p])


def test_cross_validation_fits_on_training_part_only(monkeypatch):
    _Spy.seen = []
    monkeypatch.setattr(T, "build_preset", lambda *a, **k: _Spy())
    n = 60
    X = np.column_stack([np.arange(n), np.random.default_rng(0).normal(size=n)])
    y = np.array([0, 1] * (n // 2))
    cv = T.cross_validate("psenet", X, y, ["id", "x"], folds=3, repeats=2, seed=0)
    assert cv["oof"].shape == (2, n) and np.isfinite(cv["oof"]).all()
    assert len(_Spy.seen) == 6
    for rows in _Spy.seen:
        assert len(rows) == 40  # 2/3 of the cases, never the fold's test part
    # every case is predicted once per repeat by a model that did not see it
    per_repeat = [set().union(*_Spy.seen[r * 3:(r + 1) * 3]) for r in range(2)]
    assert all(s == set(range(n)) for s in per_repeat)


def test_psenet_uses_the_cave_cut_indicators():
    """The transformer itself is tested in tests/unit/predict/test_estimators.py."""
    names = ["m_ich_volume_ml", "m_cortical_involvement", "hdr_age_y", "img_c1x2x2_0",
             "img_c1x2x2_1", "img_c1x2x2_2", "img_c1x2x2_3"]
    steps = dict((n, t) for n, t, _ in P.build_preset("psenet", names, tiny=True)
                 .named_steps["features"].transformers)
    assert steps["cave_cuts"].cuts == (("gt", 10.0), ("lt", 65.0))
