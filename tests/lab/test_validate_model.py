"""`validate_model` on toy feature tables: metrics of a bundle scored as it is, the small-size
warning, and the refusals (another target, one class only, image columns not recorded)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dicomnode.lab.cohort_table import toy_cohort
from dicomnode.lab.train_predictor import train_preset
from dicomnode.lab.validate_model import validate_model, write_validation
from dicomnode.predict.bundle import Predictor, load_predictor
from dicomnode.predict.estimators import TRUSTED_TYPES


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    out = tmp_path_factory.mktemp("model") / "he-rf"
    train_preset(toy_cohort(200, seed=3).without_images(), "he", "psenet-clinical-rf", out=out,
                 folds=2, repeats=1, n_boot=10, compare=False)
    return load_predictor(out, extra_trusted=TRUSTED_TYPES)


def test_scores_the_model_as_it_is_and_warns_when_small(model: Predictor, tmp_path: Path) -> None:
    table = toy_cohort(120, seed=9).without_images()
    result = validate_model(model, table, "he", n_boot=50)
    _, y, _ = table.target("he")
    assert result["n_cases"] == len(y) and result["n_positive"] == int(y.sum())
    m = result["cv"]["metrics"]
    assert 0.5 < m["auc"]["value"] <= 1.0 and m["auc"]["ci_low"] < m["auc"]["ci_high"]
    assert np.isfinite(result["cv"]["calibration"]["slope"])
    assert result["warnings"] and "below the minimum of 100" in result["warnings"][0]
    assert result["recorded_agreement"]["n"] == 0
    page = write_validation(result, tmp_path / "v").read_text()
    assert '<p class="warn">Too small' in page and 'id="calibration"' in page
    assert validate_model(model, table, "he", n_boot=10, min_events=5)["warnings"] == []


def test_refuses_another_target_one_class_and_missing_images(model: Predictor) -> None:
    table = toy_cohort(60, seed=4).without_images()
    with pytest.raises(ValueError, match="predicts 'he', not 'pse'"):
        validate_model(model, table, "pse")
    none = replace(table, outcomes={"he": np.zeros(len(table.ids))})
    with pytest.raises(ValueError, match="needs both events and non-events"):
        validate_model(model, none, "he")
    image_model = replace(model, feature_names=(*model.feature_names, "img_c1x2x2_0"))
    with pytest.raises(ValueError, match="needs image columns"):
        validate_model(image_model, table, "he")
