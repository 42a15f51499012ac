"""A training run writes a report with its plots, a model card and a bundle that loads back."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from dicomnode.errors import ModelError
from dicomnode.lab.cohort_table import toy_cohort
from dicomnode.lab.report import line_plot_svg, render_report
from dicomnode.lab.train_predictor import train_preset
from dicomnode.predict.bundle import load_predictor
from dicomnode.predict.estimators import TRUSTED_TYPES


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "he-multitask-he-clinical"
    table = toy_cohort(160, seed=5).without_images()
    result = train_preset(table, "he", "multitask-he-clinical", out=out, folds=3, repeats=2, seed=0,
                          n_boot=200, tiny=True)
    return table, result, out


def test_report_contains_plots(run):
    _, result, out = run
    text = (out / "report.html").read_text()
    preset = result["preset"]
    for plot in ("roc", "pr", "calibration", "dca"):
        m = re.search(rf'<svg id="{plot}" class="plot"[^>]*>(.*?)</svg>', text, re.S)
        assert m, plot
        # the model's curve is drawn (a path of many points) and named in the legend
        line = re.search(rf'<g id="{plot}-series-0">\s*<path d="([^"]*)"', m.group(1))
        assert line and line.group(1).count("L") >= 3, plot
        assert re.search(rf"<text [^>]*>{re.escape(preset)}( \(|<)", m.group(1)), plot
    ids = re.findall(r' id="([^"]*)"', text)
    assert len(ids) == len(set(ids))  # four SVGs in one page: no id twice
    assert not re.search(r"<script|<link|<img|src=", text)  # self-contained: nothing fetched
    assert "Fit on synthetic data; not clinically validated." in text
    assert "Oracle AUC" in text and "Confusion matrix" in text
    assert text == render_report(result)


def test_result_metrics_and_card(run):
    _, result, out = run
    auc = result["cv"]["metrics"]["auc"]
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert len(result["cv"]["repeat_auc"]) == 2
    assert 0.5 < result["oracle_auc"] <= 1
    c = result["cv"]["confusion"]
    assert sum(c.values()) == result["n_cases"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "not clinically validated" in card and "Oracle AUC" in card
    meta = json.loads((out / "model.json").read_text())
    assert meta["target"] == "he" and meta["preset"] == "multitask-he-clinical"
    assert meta["synthetic_training"] is True
    assert meta["metrics"]["auc"]["value"] == pytest.approx(auc["value"])
    json.loads((out / "validation.json").read_text())


def test_bundle_loads_back_and_refuses_wrong_order(run):
    table, _, out = run
    pred = load_predictor(out, feature_names=table.names, extra_trusted=TRUSTED_TYPES)
    X, _, _ = table.target("he")
    rows = [dict(zip(table.names, r, strict=True)) for r in X[:5]]
    p = pred.predict_proba_many(rows)
    assert p.shape == (5,) and np.all((p >= 0) & (p <= 1))
    with pytest.raises(ModelError, match="order|differ"):
        load_predictor(out, feature_names=table.names[::-1], extra_trusted=TRUSTED_TYPES)


def test_line_plot_svg_clips_and_escapes():
    series = [{"x": [0, 2], "y": [0, float("nan")], "label": "s&t $x$"},
              {"x": [0, 1], "y": [0, 1], "label": "ok", "points": True},
              {"x": [0.5], "y": [None], "label": "nothing"}]
    svg = line_plot_svg("x", "a <b>", series, xlabel="x", ylabel="y")
    assert svg.startswith('<svg id="x" class="plot"') and "a &lt;b&gt;" in svg
    assert "s&amp;t $x$" in svg and "nothing" not in svg  # names are text, not TeX; empty series out
    markers = re.search(r'<g id="x-series-1">.*?</g>', svg, re.S)
    assert markers and markers.group(0).count("<use ") == 2  # one marker per point
    assert svg == line_plot_svg("x", "a <b>", series, xlabel="x", ylabel="y")  # deterministic


def test_cli_register():
    from dicomnode.lab.predict_cli import register, run_train

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what")
    register(sub)
    args = parser.parse_args(["pse", "--cohort", "c", "--preset", "psenet", "--folds", "3"])
    assert args.func is run_train and args.target == "pse" and args.folds == 3 and args.repeats == 2
    args = parser.parse_args(["he", "--cohort", "c.csv", "--preset", "hybrid-kbest-svm",
                              "--threshold", "0.3"])
    assert args.target == "he" and args.threshold == 0.3 and args.seed == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["he", "--cohort", "c", "--preset", "nope"])
