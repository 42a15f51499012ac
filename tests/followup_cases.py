"""Synthetic baseline + repositioned follow-up pairs of one patient with known growth."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.lab.synth.lattice import rotation
from dicomnode.lab.synth.render import Pose
from dicomnode.lab.synth.study import StudyTruth, build_case, geometry_for, render_case, write_scan


def followup_pair(out_dir: Path, *, seed: int, baseline_ml: float, growth_ml: float,
                  site: str = "lobar", new_ivh: bool = False, matrix: int = 128,
                  thickness_mm: float = 5.0, delay_h: float = 24.0,
                  shift_mm: tuple[float, float, float] = (4.0, -3.0, 2.5),
                  turn_deg: tuple[float, float, float] = (3.0, -4.0, 2.0),
                  patient_id: str | None = None) -> tuple[StudyTruth, StudyTruth]:
    """Write ``out_dir/baseline`` and ``out_dir/followup``: the same head repositioned
    (``shift_mm``, ``turn_deg``), the clot grown by ``growth_ml`` (design volume), and IVH
    added at follow-up when ``new_ivh``."""
    case = build_case(seed, hemorrhage_ml=baseline_ml, site=site, patient_id=patient_id)
    assert case.lesion is not None
    geom = geometry_for(matrix, thickness_mm, 0.0, None)
    base = write_scan(out_dir / "baseline", case, render_case(case, geom, lesion=case.lesion, scan=0),
                      lesion=case.lesion, scan=0, acquired=case.baseline_time, compress="none")
    moved = replace(case, pose=Pose(case.pose.offset_mm + np.asarray(shift_mm),
                                    rotation(*turn_deg) @ case.pose.rot))
    grown = replace(case.lesion.scaled_to(baseline_ml + growth_ml), ivh=new_ivh or case.lesion.ivh)
    follow = write_scan(out_dir / "followup", moved, render_case(moved, geom, lesion=grown, scan=1),
                        lesion=grown, scan=1, acquired=case.baseline_time + timedelta(hours=delay_h),
                        compress="none")
    return base, follow


def later_scan(out_dir: Path, *, seed: int, baseline_ml: float, growth_ml: float, scan: int,
               delay_h: float, site: str = "lobar", matrix: int = 128,
               thickness_mm: float = 5.0) -> StudyTruth:
    """One more follow-up (``scan`` 2, 3, ...) of the patient of ``followup_pair(seed=...)``,
    repositioned differently, the clot grown by ``growth_ml`` from the baseline design."""
    case = build_case(seed, hemorrhage_ml=baseline_ml, site=site)
    assert case.lesion is not None
    geom = geometry_for(matrix, thickness_mm, 0.0, None)
    moved = replace(case, pose=Pose(case.pose.offset_mm + np.asarray((-3.0, 2.0, -1.5)),
                                    rotation(-2.0, 3.0, -1.0) @ case.pose.rot))
    grown = case.lesion.scaled_to(baseline_ml + growth_ml)
    return write_scan(out_dir, moved, render_case(moved, geom, lesion=grown, scan=scan),
                      lesion=grown, scan=scan, acquired=case.baseline_time + timedelta(hours=delay_h),
                      compress="none")


def followup_findings(sr: Dataset) -> dict[str, Any]:
    """What a follow-up's SR says of the comparison (encode/sr_followup.py): the root
    Qualitative Evaluations (code meanings, text), the follow-up group's numbers and the
    baseline group's referenced SEG instance (``baseline_seg``)."""
    out: dict[str, Any] = {}
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "C0034375":
            for sub in item.ContentSequence:
                name = sub.ConceptNameCodeSequence[0].CodeValue
                out[name] = (sub.ConceptCodeSequence[0].CodeMeaning if sub.ValueType == "CODE"
                             else sub.TextValue)
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":
            continue
        for group in item.ContentSequence:
            points = [i.TextValue for i in group.ContentSequence
                      if i.ConceptNameCodeSequence[0].CodeValue == "C2348792"]
            if not points:
                continue
            for sub in group.ContentSequence:
                if points[0].startswith("baseline") and sub.ValueType == "IMAGE":
                    out["baseline_seg"] = sub.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                if points[0] == "follow-up" and sub.ValueType == "NUM":
                    out[sub.ConceptNameCodeSequence[0].CodeValue] = float(
                        sub.MeasuredValueSequence[0].NumericValue)
    return out
