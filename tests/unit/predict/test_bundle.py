"""Model bundles: skops round trip, and every refusal (order, hash, untrusted type, versions)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from dicomnode.errors import ModelError
from dicomnode.predict.bundle import SYNTHETIC_INTENDED_USE, load_predictor, save_predictor
from dicomnode.predict.radiomics_features import DEFAULT_RADIOMICS_PARAMS

NAMES = ["m_ich_volume_ml", "m_cortical_involvement", "hdr_age_y", "rad_original_shape_Sphericity"]


class Doubler(BaseEstimator, TransformerMixin):
    """A custom type skops does not trust (and the allow-list does not hold)."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return np.asarray(x) * 2.0


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.lognormal(2.5, 0.8, n), rng.random(n) < 0.3, rng.normal(68, 12, n), rng.random(n)]
    )
    y = (0.05 * x[:, 0] + 1.5 * x[:, 1] + rng.normal(0, 1, n) > 1.5).astype(int)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x, y


def _save(folder: Path, model, **kw) -> Path:
    args: dict[str, Any] = dict(
        name="he-test",
        version="0.1",
        target="he",
        preset="test-logistic",
        feature_names=NAMES,
        training_data={"source": "unit test", "n": 120},
        metrics={"auc_cv": np.float64(0.7), "auc_ci": (0.6, 0.8)},
        calibration={"method": "none", "brier": 0.2},
        synthetic_training=True,
        radiomics_params=DEFAULT_RADIOMICS_PARAMS,
    )
    args.update(kw)
    return save_predictor(folder, model, **args)


@pytest.fixture(scope="module")
def fitted():
    x, y = _data()
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression())
    return model.fit(x, y), x


def test_round_trip(tmp_path, fitted):
    model, x = fitted
    meta_path = _save(tmp_path / "he-test", model)
    meta = json.loads(meta_path.read_text())
    assert meta["feature_names"] == NAMES and meta["n_features"] == 4
    assert meta["target"] == "he" and meta["preset"] == "test-logistic"
    assert meta["synthetic_training"] is True and SYNTHETIC_INTENDED_USE in meta["intended_use"]
    assert set(meta["libraries"]) >= {"scikit-learn", "skops", "numpy", "pyradiomics"}
    assert meta["metrics"] == {"auc_cv": 0.7, "auc_ci": [0.6, 0.8]}
    assert set(meta["files"]) == {"model.skops", "radiomics-params.yaml"}
    assert (
        tmp_path / "he-test" / "radiomics-params.yaml"
    ).read_bytes() == DEFAULT_RADIOMICS_PARAMS.read_bytes()

    pred = load_predictor(tmp_path / "he-test", feature_names=NAMES)
    assert (pred.name, pred.version, pred.target) == ("he-test", "0.1", "he")
    assert pred.synthetic_training and pred.radiomics_params.is_file()
    expected = model.predict_proba(x[:5])[:, 1]
    got = [pred.predict_proba(dict(zip(NAMES, row, strict=True))) for row in x[:5]]
    assert np.allclose(got, expected)
    assert np.allclose(pred.predict_proba_many([dict(zip(NAMES, r, strict=True)) for r in x[:5]]), expected)
    # missing features -> NaN -> imputed; extra features ignored
    p = pred.predict_proba({"m_ich_volume_ml": 30.0, "deep_3": 1.0, "hdr_age_y": math.nan})
    assert 0.0 < p < 1.0
    assert p == pytest.approx(model.predict_proba(np.array([[30.0, np.nan, np.nan, np.nan]]))[0, 1])


def test_wrong_feature_order_refused(tmp_path, fitted):
    model, _ = fitted
    _save(tmp_path / "b", model)
    with pytest.raises(ModelError, match="another order"):
        load_predictor(tmp_path / "b", feature_names=NAMES[::-1])
    with pytest.raises(ModelError, match="missing"):
        load_predictor(tmp_path / "b", feature_names=NAMES[:3])
    pred = load_predictor(tmp_path / "b")
    with pytest.raises(ModelError, match="unexpected"):
        pred.check_features([*NAMES, "clin_gcs"])
    # model.json edited to another order: the names stored with the estimator disagree
    meta_path = tmp_path / "b" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["feature_names"] = NAMES[::-1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="stored with the estimator"):
        load_predictor(tmp_path / "b")


def test_tampered_file_refused(tmp_path, fitted):
    model, _ = fitted
    _save(tmp_path / "b", model)
    f = tmp_path / "b" / "model.skops"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="hash differs"):
        load_predictor(tmp_path / "b")
    _save(tmp_path / "c", model)
    (tmp_path / "c" / "radiomics-params.yaml").write_text("setting:\n  binWidth: 25\n")
    with pytest.raises(ModelError, match="radiomics-params.yaml hash differs"):
        load_predictor(tmp_path / "c")
    (tmp_path / "c" / "radiomics-params.yaml").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_predictor(tmp_path / "c")


def test_untrusted_type_refused(tmp_path):
    x, y = _data()
    model = make_pipeline(SimpleImputer(), Doubler(), LogisticRegression()).fit(x, y)
    with pytest.raises(ModelError, match="allow-list"):
        _save(tmp_path / "b", model)
    assert not (tmp_path / "b" / "model.skops").exists()
    custom = f"{Doubler.__module__}.Doubler"
    _save(tmp_path / "b", model, extra_trusted=[custom])  # the trainer vouches for its own type
    with pytest.raises(ModelError, match="untrusted types"):
        load_predictor(tmp_path / "b")  # ... but a loader that was not told refuses it
    assert load_predictor(tmp_path / "b", extra_trusted=[custom]).predict_proba({}) > 0


def test_library_major_version_refused(tmp_path, fitted):
    model, _ = fitted
    _save(tmp_path / "b", model)
    meta_path = tmp_path / "b" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["libraries"]["numpy"] = "1.26.4"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="numpy 1.26.4.*major version"):
        load_predictor(tmp_path / "b")


def test_save_refusals(tmp_path, fitted):
    model, x = fitted
    x, y = _data()
    no_impute = make_pipeline(StandardScaler(), LogisticRegression()).fit(np.nan_to_num(x), y)
    with pytest.raises(ModelError, match="impute inside the Pipeline"):
        _save(tmp_path / "a", no_impute)
    with pytest.raises(ModelError, match="radiomics_params is required"):
        _save(tmp_path / "b", model, radiomics_params=None)
    with pytest.raises(ModelError, match="fit on 4 features"):
        _save(tmp_path / "c", model, feature_names=NAMES[:3])
    with pytest.raises(ModelError, match="target"):
        _save(tmp_path / "d", model, target="mortality")
    with pytest.raises(ModelError, match="duplicate"):
        _save(tmp_path / "e", model, feature_names=[NAMES[0]] * 4)
    _save(tmp_path / "f", model)
    with pytest.raises(ModelError, match="already holds"):
        _save(tmp_path / "f", model)
    _save(tmp_path / "f", model, overwrite=True, version="0.2")
    assert load_predictor(tmp_path / "f").version == "0.2"


def test_svm_with_kbest(tmp_path):
    names = ["m_ich_volume_ml", "m_hu_mean", "m_hu_sd", "hdr_age_y"]
    x, y = _data()
    model = make_pipeline(
        SimpleImputer(),
        StandardScaler(),
        SelectKBest(f_classif, k=2),
        CalibratedClassifierCV(SVC(), ensemble=False),
    )
    model.fit(x, y)
    _save(tmp_path / "pse", model, feature_names=names, target="pse", radiomics_params=None,
          synthetic_training=False, intended_use="Research use only.")
    meta = json.loads((tmp_path / "pse" / "model.json").read_text())
    assert "pyradiomics" not in meta["libraries"] and "deep_extractor" not in meta
    assert meta["intended_use"] == "Research use only." and meta["synthetic_training"] is False
    pred = load_predictor(tmp_path / "pse", feature_names=names)
    assert pred.radiomics_params is None
    assert pred.predict_proba(dict(zip(names, x[0], strict=True))) == pytest.approx(
        model.predict_proba(x[:1])[0, 1]
    )
    # A bundle that names a separate deep feature extractor is refused, not half-served.
    meta["deep_extractor"] = {"weights": "deep.pt"}
    (tmp_path / "pse" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="deep_"):
        load_predictor(tmp_path / "pse")
