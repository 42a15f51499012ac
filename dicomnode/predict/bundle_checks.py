"""Checks behind predictor bundles: trusted skops types, library versions, hashes, feature names.

Used by :mod:`dicomnode.predict.bundle` at save and at load; every refusal is a
:class:`~dicomnode.errors.ModelError` that says why.
"""

from __future__ import annotations

import hashlib
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dicomnode.errors import ModelError

#: Types skops does not trust by default that a bundle may hold (exact names as reported by
#: ``skops.io.get_untrusted_types``). Everything else is refused at save and at load.
ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        "numpy.dtype",
        "builtins.slice",
        "collections.OrderedDict",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.feature_selection._mutual_info.mutual_info_classif",
        "sklearn.feature_selection._univariate_selection.chi2",
        "sklearn.feature_selection._univariate_selection.f_classif",
        "sklearn.metrics._classification.accuracy_score",
        "sklearn.metrics._classification.balanced_accuracy_score",
        "sklearn.metrics._classification.brier_score_loss",
        "sklearn.metrics._classification.f1_score",
        "sklearn.metrics._classification.log_loss",
        "sklearn.metrics._ranking.average_precision_score",
        "sklearn.metrics._ranking.roc_auc_score",
        "sklearn.metrics._scorer._PassthroughScorer",
        "sklearn.metrics._scorer._Scorer",
        "sklearn.model_selection._split.KFold",
        "sklearn.model_selection._split.StratifiedKFold",
        "sklearn.model_selection._split.RepeatedStratifiedKFold",
        "sklearn.tree._tree.Tree",
        "sklearn.utils._bunch.Bunch",
    }
)

# model.json key -> installed distribution names (first found). Major versions must match.
LIBRARIES = {
    "scikit-learn": ("scikit-learn",),
    "skops": ("skops",),
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "pyradiomics": ("pyradiomics-bhklab", "pyradiomics"),
    "torch": ("torch",),
    "monai": ("monai",),
}


def installed_version(lib: str) -> str | None:
    for dist in LIBRARIES[lib]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def major_version(version: str) -> int | None:
    head = str(version).strip().lstrip("vV").split(".")[0]
    return int(head) if head.isdigit() else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, Path):
        return str(value)
    return value


def positive_index(model: Any) -> int:
    classes = list(getattr(model, "classes_", []))
    if len(classes) != 2:
        raise ModelError(f"the model must be a fitted binary classifier, classes_ = {classes}")
    for i, c in enumerate(classes):
        if c is True or (not isinstance(c, str) and c == 1):
            return i
    raise ModelError(f"the model's classes must be 0/1 or False/True, got {classes}")


def check_names(names: Sequence[str]) -> list[str]:
    names = list(names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ModelError("feature_names must be a non-empty list of non-empty strings")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ModelError(f"duplicate feature names: {dup}")
    return names


def describe_difference(expected: Sequence[str], given: Sequence[str]) -> str:
    missing = [n for n in expected if n not in set(given)]
    extra = [n for n in given if n not in set(expected)]
    parts = []
    if missing:
        parts.append(f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if extra:
        parts.append(f"unexpected {extra[:10]}{' ...' if len(extra) > 10 else ''}")
    if not parts:
        i = next(i for i, (a, b) in enumerate(zip(expected, given, strict=True)) if a != b)
        parts.append(
            f"same names in another order (first difference at position {i}: "
            f"model {expected[i]!r}, given {given[i]!r})"
        )
    return "; ".join(parts)


def model_checks(model: Any, names: list[str]) -> int:
    if not hasattr(model, "predict_proba"):
        raise ModelError(f"{type(model).__name__} has no predict_proba")
    n_in = getattr(model, "n_features_in_", None)
    if n_in is not None and int(n_in) != len(names):
        raise ModelError(f"the model was fit on {n_in} features, {len(names)} feature names given")
    fitted_names = getattr(model, "feature_names_in_", None)
    if fitted_names is not None and list(fitted_names) != names:
        raise ModelError(
            "feature names differ from those the model was fit with: "
            + describe_difference(list(fitted_names), names)
        )
    return positive_index(model)


def predict_positive(model: Any, x: np.ndarray, positive: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return np.asarray(model.predict_proba(x), dtype=float)[:, positive]


def skops_io() -> ModuleType:
    """``skops.io``, imported without letting scikit-learn's test helpers load pytest.

    At import, skops lists scikit-learn's estimators (``sklearn.utils.discovery.all_estimators``),
    which imports ``sklearn.utils._testing``, which imports pytest when it is installed: a test
    framework inside a serving process. A None entry in ``sys.modules`` makes that optional import
    fail, as on an install without pytest, for the time of this one import.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    hide = "pytest" not in sys.modules
    if hide:
        sys.modules["pytest"] = None  # type: ignore[assignment]
    try:
        import skops.io as sio
    finally:
        if hide:
            sys.modules.pop("pytest", None)
    return sio


def untrusted_types(path: Path) -> list[str]:
    sio = skops_io()
    try:
        return list(sio.get_untrusted_types(file=path))
    except Exception as exc:  # noqa: BLE001 - any failure to parse the file is a bad bundle
        raise ModelError(f"{path}: not a readable skops file ({type(exc).__name__}: {exc})") from exc
