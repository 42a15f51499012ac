"""Estimators that saved HE/PSE bundles name, so serving can unpickle them.

A bundle (``model.skops``) records each object's module path; skops loads only the types listed
as trusted. The classes here and the CNN estimators of :mod:`dicomnode.predict.cnn` are the
project's own types that the shipped bundles hold; the training presets that build them live in
``dicomnode.lab`` and are never imported by serving.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_selection import f_classif
from sklearn.linear_model import LassoCV

#: The project's types (and one scikit-learn function) that a bundle may hold; pass as
#: ``extra_trusted`` to ``save_predictor`` / ``load_predictor``.
TRUSTED_TYPES = (
    "dicomnode.predict.cnn.CNNClassifier",
    "dicomnode.predict.cnn.CNNFeatures",
    "dicomnode.predict.estimators.LassoSelector",
    "dicomnode.predict.estimators.CutIndicators",
    "sklearn.metrics._ranking.roc_auc_score",  # the grid search's scorer (hybrid-kbest-svm)
)


class CutIndicators(BaseEstimator, TransformerMixin):
    """0/1 columns ``x > value`` (``"gt"``) or ``x < value`` (``"lt"``), one per input column;
    a missing value gives 0 (the condition is not known to hold)."""

    def __init__(self, cuts: tuple[tuple[str, float], ...] = ()):
        self.cuts = cuts

    def fit(self, X, y=None):
        for op, _ in self.cuts:
            if op not in ("gt", "lt"):
                raise ValueError(f"cut operator must be 'gt' or 'lt', got {op!r}")
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=float)
        with np.errstate(invalid="ignore"):
            cols = [(X[:, j] > v) if op == "gt" else (X[:, j] < v)
                    for j, (op, v) in enumerate(self.cuts)]
        return np.column_stack(cols).astype(float) if cols else np.zeros((len(X), 0))


class LassoSelector(BaseEstimator, TransformerMixin):
    """LASSO fusion (method C): keep the features with a non-zero LassoCV coefficient on the
    0/1 outcome; at least ``min_features`` (largest |coefficient|, then univariate F) survive."""

    def __init__(self, cv: int = 5, min_features: int = 3, random_state: int = 0):
        self.cv = cv
        self.min_features = min_features
        self.random_state = random_state

    def fit(self, X, y):
        X = np.asarray(X, dtype=float)
        lasso = LassoCV(cv=self.cv, random_state=self.random_state, max_iter=5000).fit(X, y)
        coef = np.abs(lasso.coef_)
        keep = coef > 1e-8
        if keep.sum() < min(self.min_features, X.shape[1]):
            f, _ = f_classif(X, y)
            order = np.lexsort((-np.nan_to_num(f), -coef))
            keep = np.zeros(X.shape[1], bool)
            keep[order[: min(self.min_features, X.shape[1])]] = True
        self.support_ = keep
        self.alpha_ = float(lasso.alpha_)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return np.asarray(X, dtype=float)[:, self.support_]
