"""Trainable HE/PSE recipes (the five published methods of docs/METHODS.md) as named presets.

Inputs: the feature names of a cohort's feature table (``m_`` measurements, ``hdr_`` header,
``clin_`` clinical, ``rad_`` radiomics, ``img_`` a flattened image stack, see
:mod:`dicomnode.lab.cohort_table`). Outputs: an unfitted scikit-learn estimator whose
``predict_proba`` gives the risk. Side effects: none.

Every preset imputes (missing values explicit: median plus a missing-indicator column), scales,
applies its method's feature selection and classifier, and gives probabilities. The deep parts
(small 2D CNNs in torch, :mod:`dicomnode.predict.cnn`) are ordinary scikit-learn steps, so they are trained
inside each cross-validation fold on the training part only. ``tiny=True`` shrinks every deep
part for tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectKBest, SequentialFeatureSelector, f_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import QuantileTransformer, StandardScaler
from sklearn.svm import SVC

from dicomnode.predict.cnn import CNNClassifier, CNNFeatures
from dicomnode.predict.estimators import CutIndicators, LassoSelector

__all__ = [
    "IMG_PREFIX",
    "PRESETS",
    "Preset",
    "build_preset",
    "get_preset",
    "image_shape_of",
]

IMG_PREFIX = "img_"
#: Image columns are named ``img_c<C>x<H>x<W>_<i>`` so the stack shape travels with the names.
_IMG_RE = re.compile(r"^img_c(\d+)x(\d+)x(\d+)_(\d+)$")


@dataclass(frozen=True)
class Preset:
    """A named recipe: how to build it, which outcomes it was published for, its figures."""

    name: str
    method: str  # A..E of docs/METHODS.md, or "baseline"
    summary: str
    targets: tuple[str, ...]
    build: Callable[..., BaseEstimator]
    uses_images: bool = False
    comparators: tuple[str, ...] = ()  # baselines/sub-models cross-validated next to it
    published: dict[str, Any] = field(default_factory=dict)


# -- column helpers --------------------------------------------------------------------------------
def image_shape_of(names: Sequence[str]) -> tuple[int, int, int] | None:
    """(C, H, W) of the image columns, or None when there are none."""
    for n in names:
        m = _IMG_RE.match(n)
        if m:
            return int(m.group(1)), int(m.group(2)), int(m.group(3))
    return None


def _image_shape(names: Sequence[str]) -> tuple[int, int, int]:
    """The image stack shape of an image preset's table (ValueError without ``img_*`` columns)."""
    shape = image_shape_of(names)
    if shape is None:
        raise ValueError("this preset needs image columns (img_*); build the table with images")
    return shape


def _idx(names: Sequence[str], *, prefixes: Sequence[str] = (), patterns: Sequence[str] = (),
         exclude: Sequence[str] = ()) -> list[int]:
    out = []
    for i, n in enumerate(names):
        if n.startswith(IMG_PREFIX):
            continue
        hit = any(n.startswith(p) for p in prefixes) or any(re.search(p, n) for p in patterns)
        if hit and not any(re.search(e, n) for e in exclude):
            out.append(i)
    return out


def _img_idx(names: Sequence[str]) -> list[int] | slice:
    """The image columns; a slice when contiguous (a list of thousands of indices makes the
    skops file megabytes large)."""
    idx = [i for i, n in enumerate(names) if n.startswith(IMG_PREFIX)]
    if not idx:
        raise ValueError("this preset needs image columns (img_*): build the feature table with images")
    if idx == list(range(idx[0], idx[-1] + 1)):
        return slice(idx[0], idx[-1] + 1)
    return idx


#: Measured haematoma volume and cortical involvement (whatever 6a's feature names are).
_VOLUME = [r"^m_ich_volume_ml$", r"^m_volume_ml$"]
_CORTICAL = [r"^m_cortical_involvement$", r"^m_cortical"]
#: CAVE's admission cut-offs (Haapaniemi et al. 2014): volume > 10 mL, age < 65 years.
_CAVE_CUTS = [(r"^m_ich_volume_ml$", "gt", 10.0), (r"^hdr_age_y$", "lt", 65.0)]
#: Variables that are not known at admission (kept out of image-only/admission presets).
_NOT_AT_ADMISSION = [r"early_seizure"]


def _tab(seed: int = 0) -> Pipeline:
    """Median imputation with explicit missing-indicator columns, then a rank-based normal
    transform (volumes and delays are right-skewed; ranks make them usable by linear models and
    robust to outliers) and standard scaling."""
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
        ("normal", QuantileTransformer(n_quantiles=100, output_distribution="normal", subsample=None,
                                       random_state=seed)),
        ("scale", StandardScaler()),
    ])


def _xfit(tiny: bool) -> int:
    """Cross-fitting folds of a CNN score that feeds a fusion model (see CNNFeatures)."""
    return 2 if tiny else 3


def _svm(seed: int, **kw: Any) -> CalibratedClassifierCV:
    """SVM with Platt-scaled probabilities fit on internal cross-validated decision values
    (scikit-learn 1.9 deprecates ``SVC(probability=True)``)."""
    return CalibratedClassifierCV(SVC(random_state=seed, **kw), method="sigmoid",
                                  cv=StratifiedKFold(5, shuffle=True, random_state=seed), ensemble=False)


def _cnn_kwargs(tiny: bool, seed: int, **extra: Any) -> dict[str, Any]:
    base = {"width": 4, "n_features": 4, "epochs": 4, "batch_size": 32} if tiny else \
           {"width": 8, "n_features": 8, "epochs": 6, "batch_size": 32}
    base.update(seed=seed, threads=1)
    base.update(extra)
    return base


# -- the five methods -------------------------------------------------------------------------------
def build_psenet(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """A: deep image score (CNN on the slices with the mask prior) + cortical involvement + volume
    (+ age and sex from the DICOM header), logistic fusion. Clinical data are not used."""
    shape = _image_shape(names)
    side = _idx(names, patterns=_VOLUME + _CORTICAL, prefixes=("hdr_",))
    parts = [("image", CNNFeatures(shape, output="score", cross_fit=_xfit(tiny), **_cnn_kwargs(tiny, seed)),
               _img_idx(names))]
    if side:
        parts.append(("cortical_volume", _tab(), side))
    # The published cut-offs of CAVE (volume > 10 mL, age < 65) as indicators: a linear model
    # on volume and age alone cannot represent a step in risk at a threshold.
    cuts = [(i, op, value) for pattern, op, value in _CAVE_CUTS
            for i in _idx(names, patterns=[pattern])]
    if cuts:
        parts.append(("cave_cuts", CutIndicators(tuple((op, value) for _, op, value in cuts)),
                      [i for i, _, _ in cuts]))
    return Pipeline([
        ("features", ColumnTransformer(parts)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(C=1.0, max_iter=2000)),
    ])


def build_clinical_rf(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """A's comparator: random forest on the clinical variables (and header age/sex) alone."""
    idx = _idx(names, prefixes=("clin_", "hdr_"))
    if not idx:
        raise ValueError("no clinical columns (clin_*/hdr_*) for the clinical baseline")
    return Pipeline([
        ("features", ColumnTransformer([("clinical", _tab(), idx)])),
        ("clf", RandomForestClassifier(n_estimators=50 if tiny else 300, min_samples_leaf=10,
                                       max_features="sqrt", random_state=seed, n_jobs=1)),
    ])


def _forward_lr(tiny: bool) -> Pipeline:
    return Pipeline([
        ("select", SequentialFeatureSelector(LogisticRegression(max_iter=2000), direction="forward",
                                             n_features_to_select="auto", tol=0.002, scoring="roc_auc",
                                             cv=3)),
        ("lr", LogisticRegression(max_iter=2000)),
    ])


def _clinical_idx(names: Sequence[str]) -> list[int]:
    """Clinical variables of method B: clinical table, header age/sex and the measured volume."""
    return _idx(names, prefixes=("clin_", "hdr_"), patterns=_VOLUME)


def build_multitask_image(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """B, Image-to-HE: a multi-task CNN (segments the haematoma and predicts the outcome); its
    normalised score, recalibrated by logistic regression."""
    shape = _image_shape(names)
    return Pipeline([
        ("features", ColumnTransformer([
            ("image", CNNFeatures(shape, output="score", arch="multitask", cross_fit=_xfit(tiny),
                                  **_cnn_kwargs(tiny, seed)), _img_idx(names))])),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=2000)),
    ])


def build_multitask_clinical(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """B, Clinical-to-HE: multivariable logistic regression with forward selection."""
    idx = _clinical_idx(names)
    if not idx:
        raise ValueError("no clinical columns (clin_*/hdr_*) for Clinical-to-HE")
    return Pipeline([
        ("features", ColumnTransformer([("clinical", _tab(), idx)])),
        ("clf", _forward_lr(tiny)),
    ])


def build_multitask_he(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """B, Integrated-to-HE: the multi-task image score plus forward-selected clinical variables."""
    shape = _image_shape(names)
    parts: list = [("image", CNNFeatures(shape, output="score", arch="multitask", cross_fit=_xfit(tiny),
                                         **_cnn_kwargs(tiny, seed)), _img_idx(names))]
    idx = _clinical_idx(names)
    if idx:
        parts.append(("clinical", _tab(), idx))
    return Pipeline([
        ("features", ColumnTransformer(parts)),
        ("scale", StandardScaler()),
        ("clf", _forward_lr(tiny)),
    ])


def build_resnet_lasso_svm(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """C: ResNet deep features of the largest slice and its neighbours (cropped to the ROI) +
    radiomics, LASSO fusion, SVM with Platt probabilities."""
    shape = _image_shape(names)
    rad = _idx(names, prefixes=("rad_",))
    parts: list = [("deep", CNNFeatures(shape, output="score", arch="resnet", cross_fit=_xfit(tiny),
                                        **_cnn_kwargs(tiny, seed, width=4 if tiny else 8)), _img_idx(names))]
    if rad:
        parts.append(("radiomics", _tab(), rad))
    return Pipeline([
        ("features", ColumnTransformer(parts)),
        ("scale", StandardScaler()),
        ("lasso", LassoSelector(cv=3 if tiny else 5, random_state=seed)),
        ("clf", _svm(seed, kernel="rbf", C=1.0)),
    ])


def build_efficientnet_synth(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """D: 2D EfficientNet-B0 on the slices with the lesion mask as a prior channel, trained on
    each image plus five generated versions (synthesize_variants) and standard augmentation."""
    shape = _image_shape(names)
    kw = _cnn_kwargs(tiny, seed, epochs=3 if tiny else 8, n_features=8)
    return Pipeline([
        ("features", ColumnTransformer([("image", "passthrough", _img_idx(names))])),
        ("clf", CNNClassifier(shape, arch="efficientnet", augment="synthetic",
                              n_synthetic=1 if tiny else 5, **kw)),
    ])


def build_hybrid_kbest_svm(names: Sequence[str], *, seed: int = 0, tiny: bool = False) -> BaseEstimator:
    """E: radiomics + CNN features + clinical variables, SelectKBest and SVM, K and the SVM
    kernel/complexity chosen by an inner grid search (AUC)."""
    shape = _image_shape(names)
    cnn = CNNFeatures(shape, output="score", cross_fit=_xfit(tiny), **_cnn_kwargs(tiny, seed))
    parts: list = [("cnn", cnn, _img_idx(names))]
    rad = _idx(names, prefixes=("rad_",))
    clin = _idx(names, prefixes=("clin_", "hdr_", "m_"))
    if rad:
        parts.append(("radiomics", _tab(), rad))
    if clin:
        parts.append(("clinical", _tab(), clin))
    ks = [5, 10, 20, 40] if not tiny else [5, 10]
    grid = {"kbest__k": ks, "svm__estimator__kernel": ["linear", "rbf"],
            "svm__estimator__C": [0.1, 1.0] if tiny else [0.03, 0.3, 3.0]}
    inner = Pipeline([("kbest", SelectKBest(f_classif)), ("svm", _svm(seed))])
    return Pipeline([
        ("features", ColumnTransformer(parts)),
        ("scale", StandardScaler()),
        ("search", GridSearchCV(inner, grid, scoring="roc_auc",
                                cv=StratifiedKFold(3, shuffle=True, random_state=seed), n_jobs=1,
                                error_score=0.5)),
    ])


PRESETS: dict[str, Preset] = {
    "psenet": Preset(
        "psenet", "A", "deep image score + cortical involvement + volume (+ header age/sex, "
        "CAVE cut-offs volume > 10 mL and age < 65)",
        ("pse", "he"), build_psenet, uses_images=True, comparators=("psenet-clinical-rf",),
        published={"target": "pse", "n": 1130, "auc": 0.840, "accuracy": 0.876, "f1": 0.621,
                   "sensitivity": 0.716, "specificity": 0.897, "baseline_auc": 0.787,
                   "validation": "5-fold CV"}),
    "psenet-clinical-rf": Preset(
        "psenet-clinical-rf", "baseline", "random forest on clinical variables (A's comparator)",
        ("pse", "he"), build_clinical_rf,
        published={"target": "pse", "auc": 0.787, "validation": "5-fold CV"}),
    "multitask-he": Preset(
        "multitask-he", "B", "Integrated-to-HE: multi-task CNN score + forward-selected clinical LR",
        ("he", "pse"), build_multitask_he, uses_images=True,
        comparators=("multitask-he-image", "multitask-he-clinical"),
        published={"target": "he", "n": 572, "auc": 0.83, "accuracy": 0.813, "sensitivity": 0.762,
                   "specificity": 0.826, "validation": "held-out test"}),
    "multitask-he-image": Preset(
        "multitask-he-image", "B", "Image-to-HE: multi-task CNN score alone", ("he", "pse"),
        build_multitask_image, uses_images=True,
        published={"target": "he", "auc": 0.76, "accuracy": 0.673, "sensitivity": 0.810,
                   "specificity": 0.640}),
    "multitask-he-clinical": Preset(
        "multitask-he-clinical", "B", "Clinical-to-HE: logistic regression, forward selection",
        ("he", "pse"), build_multitask_clinical, published={"target": "he", "auc": 0.81}),
    "resnet-lasso-svm": Preset(
        "resnet-lasso-svm", "C", "ResNet features (max slice +-1/2 mm) + radiomics, LASSO, SVM",
        ("he", "pse"), build_resnet_lasso_svm, uses_images=True,
        published={"target": "he", "n": 235, "auc": 0.895, "radiomics_auc": 0.833, "deep_auc": 0.867,
                   "validation": "8:2 split (47 test)"}),
    "efficientnet-synth": Preset(
        "efficientnet-synth", "D", "EfficientNet-B0, lesion mask prior, synthetic augmentation",
        ("he", "pse"), build_efficientnet_synth, uses_images=True,
        published={"target": "he", "n": 122, "accuracy": 0.84, "f1": 0.82, "sensitivity": 0.77,
                   "specificity": 0.91, "validation": "5-fold CV (best of the reported range)"}),
    "hybrid-kbest-svm": Preset(
        "hybrid-kbest-svm", "E", "radiomics + CNN + clinical, SelectKBest grid search, SVM",
        ("he", "pse"), build_hybrid_kbest_svm, uses_images=True,
        published={"target": "he", "n": 408, "auc": 0.949, "accuracy": 0.95, "precision": 0.95,
                   "sensitivity": 0.83, "average_precision": 0.94, "validation": "100 test cases"}),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def build_preset(name: str, feature_names: Sequence[str], *, seed: int = 0,
                 tiny: bool = False) -> BaseEstimator:
    """An unfitted estimator of preset ``name`` for a table with columns ``feature_names``."""
    preset = get_preset(name)
    if preset.uses_images and image_shape_of(feature_names) is None:
        raise ValueError(f"preset {name!r} needs image columns (img_*); build the table with images")
    return preset.build(list(feature_names), seed=seed, tiny=tiny)
