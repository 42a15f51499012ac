"""A feature cohort: a cohort stored as its feature table, without images (docs/prediction.md,
learning loop).

``dicomnode cohort export`` writes one from the node's database; ``dicomnode train he|pse`` and
``dicomnode validate he|pse --cohort`` read it (:func:`dicomnode.lab.cohort_table.load_cohort`
recognises the folder by its ``cohort.json``). Layout of the folder:

- ``cohort.json``: format and version, description, counts, outcome definitions, what was left
  out and why, whether identifiers are pseudonymised.
- ``cases.csv``: one row per case: ``case_id``, ``patient``, the outcomes (``he``, ``pse``:
  1, 0 or empty when unknown), the follow-ups behind ``he`` and the risks the node predicted
  with their models.
- ``features.csv``: ``case_id`` and one column per feature (names as in docs/prediction.md
  "Features"; empty where unknown).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.lab.cohort_table import CohortTable, name_order

__all__ = ["FORMAT", "column_order", "is_feature_cohort", "read_feature_cohort",
           "write_feature_cohort"]

FORMAT = "dicomnode-feature-cohort"
FORMAT_VERSION = 1
OUTCOMES = ("he", "pse")


def is_feature_cohort(source: Path) -> bool:
    """Whether ``source`` is a feature cohort folder."""
    meta = Path(source) / "cohort.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def column_order(name: str) -> tuple[int, str, int]:
    """Sort key of feature columns: ``m_``, ``hdr_``, ``clin_``, ``rad_`` by name, then the
    ``img_*`` pixels by their index (the image presets reshape them in that order)."""
    group, text = name_order(name)
    head, _, index = name.rpartition("_")
    if name.startswith("img_") and index.isdigit():
        return group, head, int(index)
    return group, text, -1


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return repr(float(v)) if isinstance(v, float) else str(v)


def write_feature_cohort(out: Path, cases: Sequence[Mapping[str, Any]],
                         features: Sequence[Mapping[str, float]], meta: Mapping[str, Any]) -> Path:
    """Write the folder: ``cases`` (one mapping per case, ``case_id`` first) and their
    ``features``, in the same order; ``meta`` goes into ``cohort.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted({n for f in features for n in f}, key=column_order)
    columns = list(dict.fromkeys(k for c in cases for k in c))
    with (out / "cases.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows([_cell(c.get(k)) for k in columns] for c in cases)
    with (out / "features.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", *names])
        w.writerows([c["case_id"], *(_cell(row.get(n)) for n in names)]
                    for c, row in zip(cases, features, strict=True))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta,
           "n_cases": len(cases), "n_features": len(names)}
    (out / "cohort.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return out


def _float(text: str) -> float:
    return float(text) if text.strip() else math.nan


def read_feature_cohort(source: Path, *, images: bool = True,
                        limit: int | None = None) -> CohortTable:
    """The :class:`CohortTable` of a feature cohort folder (``images=False`` drops ``img_*``)."""
    source = Path(source)
    meta = json.loads((source / "cohort.json").read_text())
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{source}: not a {FORMAT} version {FORMAT_VERSION} folder")
    with (source / "cases.csv").open(newline="", encoding="utf-8") as f:
        cases = {r["case_id"]: r for r in csv.DictReader(f)}
    with (source / "features.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        names = next(reader)[1:]
        rows = [r for r in reader][:limit]
    missing = [r[0] for r in rows if r[0] not in cases]
    if missing:
        raise ValueError(f"{source}: features.csv has cases that cases.csv lacks: {missing[:5]}")
    ids = [r[0] for r in rows]
    X = np.array([[_float(v) for v in r[1:]] for r in rows], dtype=float).reshape(len(rows), len(names))
    outcomes = {t: np.array([_float(cases[i].get(t) or "") for i in ids], float)
                for t in OUTCOMES if any(t in c for c in cases.values())}
    table = CohortTable(ids, names, X, outcomes, synthetic=bool(meta.get("synthetic", False)),
                        description=str(meta.get("description", f"feature cohort {source}")),
                        source=str(source), patients=[cases[i].get("patient", i) for i in ids])
    return table if images else table.without_images()
