"""The second reader with the real BLAST-CT v1 model (one model) on the real GE scan (slow).

The primary backend is the synthetic-data unet, as served; the second reader is built the way the
worker builds it (``build_second_reader`` from ``[qa]``), with the model path from the settings.
Both readers' volumes are recorded by the ``second_reader_*`` checks; on this scan (no known
haemorrhage) they agree within the default limits, and the same label maps are flagged as a
disagreement under a limit tighter than their difference. The time of the BLAST-CT run is
printed (``-s``) for docs/qa.md.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.config import load_settings
from dicomnode.domain import ICH, IVH, LabelMap
from dicomnode.load.volume import load_series
from dicomnode.pipeline import make_context
from dicomnode.qa import compare_readers
from tests.conftest import EMPTY_CONFIG, GE_DIR, SHARED

BLAST_CT = SHARED / "models" / "blast-ct-v1"


def _ml(labels: LabelMap, value: int) -> float:
    voxel_ml = float(np.prod(labels.image.GetSpacing())) / 1000.0
    return float((sitk.GetArrayViewFromImage(labels.image) == value).sum() * voxel_ml)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # one BLAST-CT model on 2 shared CPU cores: 6 to 20 minutes
@pytest.mark.skipif(not GE_DIR.is_dir(), reason=f"{GE_DIR} absent")
@pytest.mark.skipif(not (BLAST_CT / "weights" / "model_1.pt").is_file(),
                    reason=f"BLAST-CT weights absent under {BLAST_CT}")
def test_blast_ct_second_reader_on_the_ge_scan(tmp_path: Path) -> None:
    settings = load_settings(EMPTY_CONFIG, overrides={
        "storage.path": str(tmp_path), "segmentation.backend": "unet",
        "segmentation.device": "cpu", "segmentation.blast_ct_model": str(BLAST_CT),
        "qa.second_reader": "blast_ct", "qa.second_reader_ensemble_size": 1,
        "qa.second_reader_on_cpu": True, "prediction.enabled": False})
    ctx = make_context(settings)
    assert ctx.second_reader is not None
    volume = load_series(sorted(p for p in GE_DIR.rglob("*") if p.is_file()
                                and not p.name.startswith(("LICENSE", "README"))))
    primary = ctx.backend.segment(volume)
    t0 = time.perf_counter()
    second = ctx.second_reader.segment(volume)
    blast_s = time.perf_counter() - t0
    print(f"\nBLAST-CT model 1 on the GE scan: {blast_s:.0f} s; "
          f"unet ICH {_ml(primary, ICH):.3f} mL IVH {_ml(primary, IVH):.3f} mL; "
          f"BLAST-CT ICH {_ml(second, ICH):.3f} mL IVH {_ml(second, IVH):.3f} mL")
    assert second.model == "blast-ct-v1" and second.image.GetSize() == volume.image.GetSize()

    report = compare_readers(primary, second, settings.qa)
    checks = {c.name: c for c in report.checks}
    for name, value in (("second_reader_ich", ICH), ("second_reader_ivh", IVH)):
        check = checks[name]
        assert check.value == round(_ml(second, value), 3)  # the second reader's volume
        assert f"{_ml(primary, value):.1f} mL" in check.message  # and the primary's
        assert "blast-ct-v1" in check.message
    # No known haemorrhage: both readers find little, well within the default limits.
    assert _ml(second, ICH) < 1.0 and _ml(second, IVH) < 1.0
    assert report.status == "pass", report.checks

    # The same maps under a limit tighter than their ICH difference: flagged, both volumes kept.
    gap_ml = abs(_ml(primary, ICH) - _ml(second, ICH))
    if gap_ml < 0.05:
        pytest.skip(f"the readers differ by only {gap_ml:.3f} mL ICH: nothing to flag")
    tight = replace(settings.qa, second_reader_abs_ml=gap_ml / 2, second_reader_rel=0.0)
    flagged = {c.name: c for c in compare_readers(primary, second, tight).checks}
    assert flagged["second_reader_ich"].outcome == "warn"  # warn_only by default
    assert "they disagree" in flagged["second_reader_ich"].message
    assert flagged["second_reader_ich"].value == checks["second_reader_ich"].value
