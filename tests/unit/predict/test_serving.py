"""Serving the shipped reference models: every feature they use is provided at run time."""

from __future__ import annotations

from pathlib import Path

import pytest
import SimpleITK as sitk

from dicomnode.domain import LabelMap
from dicomnode.lab.synth import make_study
from dicomnode.load import load_series
from dicomnode.measure import measure
from dicomnode.predict.image_features import ImageSpec, image_features
from dicomnode.predict.serving import Predictors, prediction_record

MODELS = Path(__file__).resolve().parents[3] / "models"


@pytest.mark.skipif(not (MODELS / "pse-psenet" / "model.json").is_file(), reason="no model")
def test_reference_models_get_all_their_features(tmp_path: Path) -> None:
    truth = make_study(tmp_path, seed=9, hemorrhage_ml=25.0, site="lobar", matrix=64)
    volume = load_series(sorted(truth.dicom_dir.glob("*.dcm")))
    lab = sitk.ReadImage(str(truth.label_path), sitk.sitkUInt8)
    lab.CopyInformation(volume.image)
    labels = LabelMap(image=lab, backend="truth", model="truth", model_version="1")
    m = measure(volume, labels)
    he = MODELS / "he-multitask-he"
    predictors = Predictors.load(he if (he / "model.json").is_file() else None,
                                 MODELS / "pse-psenet")
    prediction = predictors.predict(volume, labels, m)
    assert prediction.epilepsy is not None and prediction.epilepsy.synthetic_training is True
    assert prediction.cave is not None and prediction.cave.partial is True  # early seizure unknown
    out = prediction_record(prediction)
    assert 0.0 <= out["pse_probability"] <= 1.0 and out["pse_synthetic_training"] is True
    assert out["cave_partial"] is True and out["pse_model"] == "pse-psenet"
    # The model's features are all present (none left to imputation) for a study with blood.
    features = predictors.pse.extract(volume, labels, m, header=dict(volume.header))
    features.update(image_features(volume, labels, ImageSpec()))
    missing = [n for n in predictors.pse.feature_names if n not in features]
    assert not missing, missing[:5]
