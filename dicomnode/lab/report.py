"""Validation report: one self-contained HTML page with the plots inline as SVG (matplotlib).

Inputs: the result dict of :func:`dicomnode.lab.train_predictor.train_preset` (metrics with CIs,
curves, confusion matrix, comparators, oracle AUC). Outputs: HTML text / file. Side effects:
:func:`write_report` writes one file.

Plots: ROC (``id="roc"``), precision-recall (``id="pr"``), calibration (``id="calibration"``)
and decision curve (``id="dca"``), each an ``<svg>`` element with the class ``plot``, drawn by
matplotlib's SVG backend (no pyplot, no files, no scripts).
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

__all__ = ["line_plot_svg", "render_report", "write_report"]

COLOURS = ("#1f5aa6", "#c8553d", "#2a9d8f", "#8d6cab", "#e9a03b", "#555555")
FIGSIZE_IN = (4.8, 4.0)
# Text stays text (small, searchable; the page's sans-serif when DejaVu is absent); names are
# not parsed as TeX; ids come from a salt, so that a report renders the same every time.
_RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 9}


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, int | float) and math.isfinite(v) else "n/a"


def line_plot_svg(
    plot_id: str,
    title: str,
    series: Sequence[Mapping[str, Any]],
    *,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    ylim: tuple[float, float] = (0.0, 1.0),
    diagonal: bool = False,
) -> str:
    """An inline ``<svg>`` line plot. Each series: ``{"x", "y", "label"}`` and optional ``"dash"``,
    ``"points"`` (markers) and ``"colour"``. Lines are cut at the limits; a series with no finite
    point is left out. The ``<g>`` of series ``k`` has the id ``<plot_id>-series-<k>``."""
    # matplotlib's stubs type rc keys as a Literal of every known name; these are known names.
    with matplotlib.rc_context({**_RC, "svg.hashsalt": plot_id}):  # type: ignore[dict-item]
        fig = Figure(figsize=FIGSIZE_IN, layout="constrained")
        FigureCanvasSVG(fig)
        ax = fig.add_subplot()
        ax.set(xlim=xlim, ylim=ylim, xlabel=xlabel, ylabel=ylabel)
        ax.set_title(title, fontweight="bold")
        ax.grid(color="#eee")
        if diagonal:
            ax.plot(xlim, ylim, color="#aaa", linestyle=(0, (4, 3)), linewidth=1, gid="reference")
        for k, s in enumerate(series):
            x, y = np.asarray(s["x"], dtype=float), np.asarray(s["y"], dtype=float)
            if not (np.isfinite(x) & np.isfinite(y)).any():
                continue
            ax.plot(x, y, color=s.get("colour", COLOURS[k % len(COLOURS)]), linewidth=1.8,
                    linestyle="--" if s.get("dash") else "-", marker="o" if s.get("points") else None,
                    markersize=4, label=str(s.get("label", "")), gid=f"series-{k}")
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _inline(buf.getvalue(), plot_id, title)


def _inline(svg: str, plot_id: str, title: str) -> str:
    """matplotlib's SVG file as an element of the page: no XML prolog, ids unique in the page."""
    svg = svg[svg.index("<svg"):]
    # All plots share the page's id namespace, and matplotlib numbers its groups per figure.
    svg = re.sub(r'(id="|href="#|url\(#)', rf"\g<1>{plot_id}-", svg)
    e = html.escape
    return svg.replace("<svg ", f'<svg id="{e(plot_id)}" class="plot" role="img" aria-label="{e(title)}" ', 1)


def _roc(models: Mapping[str, Mapping[str, Any]]) -> str:
    series = [{"x": m["curves"]["roc"]["fpr"], "y": m["curves"]["roc"]["tpr"],
               "label": f"{name} ({_fmt(m['metrics']['auc']['value'])})"} for name, m in models.items()]
    return line_plot_svg("roc", "ROC", series, xlabel="1 - specificity", ylabel="sensitivity", diagonal=True)


def _pr(models: Mapping[str, Mapping[str, Any]]) -> str:
    series = [{"x": m["curves"]["pr"]["recall"], "y": m["curves"]["pr"]["precision"],
               "label": f"{name} (AP {_fmt(m['metrics']['average_precision']['value'])})"}
              for name, m in models.items()]
    prev = next(iter(models.values()))["curves"]["pr"]["prevalence"]
    series.append({"x": [0, 1], "y": [prev, prev], "label": f"prevalence {prev:.2f}", "dash": True,
                   "colour": "#999"})
    return line_plot_svg("pr", "Precision-recall", series, xlabel="recall (sensitivity)", ylabel="precision")


def _calibration(models: Mapping[str, Mapping[str, Any]]) -> str:
    top = 0.0
    series = []
    for name, m in models.items():
        c = m["curves"]["calibration"]
        top = max([top, *c["predicted"], *c["observed"]])
        series.append({"x": c["predicted"], "y": c["observed"], "label": name, "points": True})
    lim = min(1.0, max(0.1, math.ceil(top * 10 + 0.5) / 10))
    return line_plot_svg("calibration", "Calibration (quantile bins)", series, xlabel="mean predicted risk",
                         ylabel="observed rate", xlim=(0, lim), ylim=(0, lim), diagonal=True)


def _dca(models: Mapping[str, Mapping[str, Any]]) -> str:
    first = next(iter(models.values()))["curves"]["dca"]
    t = first["threshold"]
    series = [{"x": m["curves"]["dca"]["threshold"], "y": m["curves"]["dca"]["model"], "label": name}
              for name, m in models.items()]
    series.append({"x": t, "y": first["treat_all"], "label": "treat all", "dash": True, "colour": "#999"})
    series.append({"x": t, "y": first["treat_none"], "label": "treat none", "dash": True, "colour": "#333"})
    top = max([0.02, *(v for s in series for v in s["y"])])
    return line_plot_svg("dca", "Decision curve", series, xlabel="threshold probability",
                         ylabel="net benefit", xlim=(0, max(t)), ylim=(-0.05, round(top * 1.1 + 0.005, 3)))


def _metric_table(models: Mapping[str, Mapping[str, Any]], oracle: float | None) -> str:
    names = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "average_precision", "brier")
    head = "".join(f"<th>{n.replace('_', ' ')}</th>" for n in names)
    rows = []
    for model, m in models.items():
        cells = "".join(
            f"<td>{_fmt(m['metrics'][n]['value'])}<br><small>({_fmt(m['metrics'][n]['ci_low'])}–"
            f"{_fmt(m['metrics'][n]['ci_high'])})</small></td>" for n in names)
        rows.append(f"<tr><th>{html.escape(model)}</th>{cells}</tr>")
    if oracle is not None:
        rows.append(f"<tr><th>oracle (true risks)</th><td>{_fmt(oracle)}</td>"
                    + "<td></td>" * (len(names) - 1) + "</tr>")
    return f'<table class="metrics"><tr><th>model</th>{head}</tr>{"".join(rows)}</table>'


def _confusion(c: Mapping[str, int], threshold: float,
               note: str = "out-of-fold, all repeats pooled") -> str:
    return (f'<table class="confusion"><caption>Confusion matrix at threshold {threshold:g} '
            f'({html.escape(note)})</caption>'
            f'<tr><th></th><th>predicted +</th><th>predicted −</th></tr>'
            f'<tr><th>outcome +</th><td>TP {c["tp"]}</td><td>FN {c["fn"]}</td></tr>'
            f'<tr><th>outcome −</th><td>FP {c["fp"]}</td><td>TN {c["tn"]}</td></tr></table>')


def _wording(result: Mapping[str, Any]) -> tuple[str, str, str, str, str, str]:
    """Title, heading (HTML), method text (HTML), per-repeat AUCs, confusion caption and the
    warnings (HTML) of a training run or, with ``kind`` "validation", of a validation."""
    e = html.escape
    main = result["cv"]
    warning = ('<p class="warn">Fit on synthetic data; not clinically validated.</p>'
               if result.get("synthetic") else "")
    warning += "".join(f'<p class="warn">{e(w)}</p>' for w in result.get("warnings", []))
    title = result.get("title") or f"{result['target'].upper()} model: {result['preset']}"
    heading = (f"{e(result['target'].upper())} validation — model <code>{e(result['model'])}</code>"
               if result.get("kind") == "validation" else
               f"{e(result['target'].upper())} prediction — preset <code>{e(result['preset'])}</code>")
    method = e(result["validation_text"]) if result.get("validation_text") else (
        f"Validation: stratified {result['folds']}-fold cross-validation repeated "
        f"{result['repeats']} times (seed {result['seed']}); out-of-fold predictions averaged over "
        f"repeats; 95% CIs by stratified bootstrap ({result.get('n_boot', 0)} replicates). "
        f"Threshold {result['threshold']:g}.")
    repeats = main.get("repeat_auc", [])
    per_repeat = f"Per-repeat AUC: {', '.join(_fmt(a) for a in repeats)}." if repeats else ""
    confusion_note = result.get("confusion_note", "out-of-fold, all repeats pooled")
    return title, heading, method, per_repeat, confusion_note, warning


def render_report(result: Mapping[str, Any]) -> str:
    """The HTML page of one training run (see :func:`dicomnode.lab.train_predictor.train_preset`)
    or of one validation (:func:`dicomnode.lab.validate_model.validate_model`: its ``title``,
    ``validation_text``, ``metrics_heading``, ``confusion_note`` and ``warnings`` replace the
    cross-validation's wording)."""
    e = html.escape
    models = {result.get("model") or result["preset"]: result["cv"], **result.get("comparators", {})}
    main = result["cv"]
    oracle = result.get("oracle_auc")
    cal = main.get("calibration", {})
    notes = "".join(f"<li>{e(n)}</li>" for n in result.get("notes", []))
    gap = ""
    if oracle is not None:
        gap = (f"<p><b>Oracle AUC</b> of the true risks on the same patients: {_fmt(oracle)}; "
               f"model {_fmt(main['metrics']['auc']['value'])} (gap "
               f"{_fmt(oracle - main['metrics']['auc']['value'])}).</p>")
    title, heading, method, per_repeat, confusion_note, warning = _wording(result)
    published = result.get("published") or {}
    pub = ", ".join(f"{k} {v}" for k, v in published.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>dicomnode {e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
td {{ text-align: right; }} small {{ color: #666; }} .plots svg {{ margin: 6px; }}
.warn {{ color: #a00; font-weight: bold; }}
</style></head><body>
<h1>{heading}</h1>
{warning}
<p>{e(result.get('summary', ''))}</p>
<p>Data: {e(result.get('data_description', ''))}. {result['n_cases']} cases, {result['n_positive']} with
{e(result['target'].upper())} (prevalence {_fmt(result['n_positive'] / max(result['n_cases'], 1))}).
{method}</p>
{gap}
<h2>{e(result.get('metrics_heading', 'Metrics (cross-validated)'))}</h2>
{_metric_table(models, oracle)}
<p>Calibration: intercept {_fmt(cal.get('intercept', float('nan')))},
slope {_fmt(cal.get('slope', float('nan')))}
(ideal 0 and 1), expected calibration error {_fmt(cal.get('ece', float('nan')))}.
{per_repeat}</p>
{_confusion(main['confusion'], result['threshold'], confusion_note)}
<h2>Plots</h2>
<div class="plots">{_roc(models)}{_pr(models)}{_calibration(models)}{_dca(models)}</div>
<h2>Published figures of the method</h2><p>{e(pub) or 'none'}</p>
<h2>Notes</h2><ul>{notes}</ul>
<p><small>dicomnode {e(str(result.get('versions', {}).get('dicomnode', '')))};
time {_fmt(result.get('seconds', float('nan')))} s.</small></p>
</body></html>
"""


def write_report(result: Mapping[str, Any], path: Path) -> Path:
    """Write :func:`render_report` to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(result), encoding="utf-8")
    return path
