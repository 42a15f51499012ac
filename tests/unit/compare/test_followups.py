"""dicomnode.followups: a prior read back from its stored results."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from dicomnode.followups import Prior, load_prior
from dicomnode.lab.synth import make_study


def test_load_prior_reads_stored_results(tmp_path: Path) -> None:
    truth = make_study(tmp_path / "s", seed=5, hemorrhage_ml=10.0, matrix=64)
    out = tmp_path / "r"
    out.mkdir()
    (out / "result.json").write_text(json.dumps({
        "status": "done", "he_probability": 0.37, "he_model": "he-svm",
        "he_model_version": "1.0", "he_synthetic_training": True}))
    shutil.copy(truth.label_path, out / "labels.nii.gz")
    prior = Prior(truth.series_instance_uid, datetime(2024, 1, 1), out,
                  tuple(sorted(truth.dicom_dir.glob("*.dcm"))))
    scan, risk = load_prior(prior)
    assert risk is not None and (risk.model, risk.synthetic_training) == ("he-svm", True)
    assert scan.he_probability == 0.37 and scan.acquired == datetime(2024, 1, 1)
    assert scan.labels.GetSize() == scan.image.GetSize()
    (out / "result.json").write_text(json.dumps({"status": "not_analysed"}))
    with pytest.raises(ValueError, match="not_analysed"):
        load_prior(prior)
