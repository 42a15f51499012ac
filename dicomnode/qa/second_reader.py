"""The second reader: another backend's volumes against the primary's, per compartment.

Inputs: the primary :class:`~dicomnode.domain.LabelMap` and the second reader's, on the same
grid, and ``[qa]`` settings. Outputs: a :class:`~dicomnode.domain.QAReport` with
``second_reader_ich`` and ``second_reader_ivh``; each records both volumes. Side effects: none.
The pipeline runs the second backend (``[qa] second_reader``, built by
``dicomnode.segment.registry.build_second_reader``); this module only compares.

They disagree when ``|a - b| > max(second_reader_abs_ml, second_reader_rel * max(a, b))``.
A backend that does not separate IVH from ICH (``threshold``) is compared on ICH + IVH.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from dicomnode.config import QASettings
from dicomnode.domain import ICH, IVH, LabelMap, QACheck, QAReport

from .common import check


def _volumes_ml(labels: LabelMap) -> dict[int, float]:
    lab = sitk.GetArrayViewFromImage(labels.image)
    voxel_ml = float(np.prod(labels.image.GetSpacing())) / 1000.0
    return {value: float((lab == value).sum() * voxel_ml) for value in (ICH, IVH)}


def compare_readers(primary: LabelMap, second: LabelMap, cfg: QASettings) -> QAReport:
    """``second_reader_ich`` and ``second_reader_ivh`` (see the module docstring)."""
    if primary.image.GetSize() != second.image.GetSize():
        raise ValueError(f"second reader grid {second.image.GetSize()} is not the primary's "
                         f"{primary.image.GetSize()}")
    a, b = _volumes_ml(primary), _volumes_ml(second)
    pairs = {ICH: (a[ICH], b[ICH]), IVH: (a[IVH], b[IVH])}
    if IVH not in second.labels or IVH not in primary.labels:
        total = (a[ICH] + a[IVH], b[ICH] + b[IVH])
        pairs = {ICH: total}
    limit = (f"|difference| <= max({cfg.second_reader_abs_ml:g} mL, "
             f"{cfg.second_reader_rel:.0%} of the larger)")
    checks: list[QACheck] = []
    for value, name in ((ICH, "ich"), (IVH, "ivh")):
        if value not in pairs:
            checks.append(QACheck(f"second_reader_{name}", None, limit, "pass",
                                  f"not measured: {second.backend} does not separate IVH"))
            continue
        va, vb = pairs[value]
        allowed = max(cfg.second_reader_abs_ml, cfg.second_reader_rel * max(va, vb))
        what = "ICH" if value == ICH else "IVH"
        if len(pairs) == 1:
            what = "ICH + IVH"
        checks.append(check(
            f"second_reader_{name}", round(vb, 3), limit, abs(va - vb) <= allowed,
            f"second reader {second.model}: {what} {vb:.1f} mL vs {va:.1f} mL "
            f"({primary.model})" + ("" if abs(va - vb) <= allowed else ", they disagree"), cfg))
    return QAReport(tuple(checks))
