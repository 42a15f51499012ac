"""Cohort model: prevalences, recoverable coefficients, Bayes AUC, follow-up scans."""

from __future__ import annotations

import csv
import json
from datetime import datetime

import numpy as np
import pydicom
import pytest

from dicomnode.lab.synth import make_cohort, sample_cohort_arrays, sample_cohort_table
from dicomnode.lab.synth.cohort import (
    HE_COEFS,
    PSE_COEFS,
    bayes_optimal_auc,
    expected_auc,
    fit_logistic,
    he_features,
    pse_features,
)
from dicomnode.lab.synth.cohort_io import he_clinical


@pytest.fixture(scope="module")
def table():
    return sample_cohort_arrays(20_000, seed=21)


def test_prevalences_near_literature(table):
    assert 0.22 <= table["he"].mean() <= 0.28
    assert 0.05 <= table["pse"].mean() <= 0.08
    assert 0.5 <= table["volume_ml"].min() and table["volume_ml"].max() <= 120


@pytest.mark.parametrize(
    "outcome, coefs, feats", [("he", HE_COEFS, he_features), ("pse", PSE_COEFS, pse_features)]
)
def test_logistic_fit_recovers_documented_coefficients(table, outcome, coefs, feats):
    f = feats(table)
    beta, se = fit_logistic(np.column_stack(list(f.values())), table[outcome].astype(float))
    truth = np.array([coefs["intercept"], *(coefs[k] for k in f)])
    assert np.all(np.abs(beta - truth) < np.maximum(4 * se, 0.05)), (beta, truth, se)


def test_bayes_optimal_auc_matches_empirical_auc(table):
    p, y = table["p_he"], table["he"]
    order = np.argsort(p)
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    empirical = (ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())
    assert expected_auc(p) == pytest.approx(empirical, abs=0.015)
    assert 0.7 < bayes_optimal_auc("he", n=50_000) < 0.8
    assert 0.75 < bayes_optimal_auc("pse", n=50_000) < 0.88


def test_followup_volumes_respect_clinical_he_definition(table):
    he = [he_clinical(a, b) for a, b in zip(table["volume_ml"], table["followup_volume_ml"], strict=True)]
    np.testing.assert_array_equal(he, table["he"])


def test_table_rows_and_determinism():
    rows = sample_cohort_table(50, seed=4)
    assert len(rows) == 50 and isinstance(rows[0]["age_y"], float)
    assert rows == sample_cohort_table(50, seed=4)
    assert rows != sample_cohort_table(50, seed=5)


def test_rendered_cohort_with_follow_up(tmp_path):
    manifest = make_cohort(tmp_path, 3, seed=2, follow_up=True, matrix=64, n_negative=1)
    rows = list(csv.DictReader(manifest.open()))
    assert [r["class"] for r in rows] == ["ich", "ich", "ich", "negative"]
    model = json.loads((tmp_path / "cohort_model.json").read_text())
    assert model["he"]["coefficients"] == HE_COEFS
    for r in rows[:3]:
        assert r["he_observed"] == r["he"]
        base = pydicom.dcmread(next((tmp_path / r["baseline_dir"] / "dicom").iterdir()))
        fu = pydicom.dcmread(next((tmp_path / r["followup_dir"] / "dicom").iterdir()))
        assert base.PatientID == fu.PatientID == r["patient_id"]
        assert base.StudyInstanceUID != fu.StudyInstanceUID
        t0, t1 = (datetime.strptime(d.StudyDate + d.StudyTime, "%Y%m%d%H%M%S") for d in (base, fu))
        assert 23.5 <= (t1 - t0).total_seconds() / 3600 <= 72.5
        truth = json.loads((tmp_path / r["baseline_dir"] / "truth.json").read_text())
        assert truth["ich_volume_ml"] == pytest.approx(float(r["ich_volume_ml"]))
