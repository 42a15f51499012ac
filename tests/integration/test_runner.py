"""``dicomnode run``: files in, results out, grouped by series, eligibility applied."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom

from dicomnode import __version__
from dicomnode.lab.synth import make_study
from tests.conftest import GE_DIR

KEYS = ("series_instance_uid", "status", "reason", "backend", "model", "model_version",
        "ich_volume_ml", "ivh_volume_ml", "abc2_volume_ml", "cortical_involvement", "site",
        "markers", "timings_s")


def test_run_writes_results_for_every_series(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    truth = make_study(inputs / "ich", seed=5, hemorrhage_ml=20.0, site="lobar", matrix=128)
    shutil.copytree(GE_DIR, inputs / "ge")  # real, tilted, uneven spacing, no blood
    scout = make_study(inputs / "scout", seed=6, hemorrhage_ml=None, matrix=64, n_slices=3)
    (inputs / "notes.txt").write_text("not DICOM")
    config = tmp_path / "c.toml"
    config.write_text('[segmentation]\nbackend = "threshold"\n')
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dicomnode.cli", "run", str(inputs), "--out",
                           str(out), "--config", str(config)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/result.json")}
    assert len(results) == 3
    ich = results[truth.series_instance_uid]
    assert all(k in ich for k in KEYS)
    assert ich["status"] == "done" and ich["backend"] == "threshold"
    assert abs(ich["ich_volume_ml"] - truth.ich_volume_ml) < 0.35 * truth.ich_volume_ml
    assert ich["site"] == "lobar"
    for name in ("labels.nii.gz", "seg.dcm", "sr.dcm", "previews/overlay-summary.png"):
        assert (out / truth.series_instance_uid / name).is_file(), name
    assert list((out / truth.series_instance_uid / "overlay").glob("*.dcm"))
    # SEG and SR both name the software that made them (PS3.3 C.7.5.1 Software Versions).
    for name in ("seg.dcm", "sr.dcm"):
        ds = pydicom.dcmread(out / truth.series_instance_uid / name)
        assert str(ds.SoftwareVersions) == __version__, name
    ge = next(r for uid, r in results.items() if uid not in (truth.series_instance_uid,
                                                             scout.series_instance_uid))
    assert ge["status"] == "done" and ge["resampled"] is True
    assert isinstance(ge["ich_volume_ml"], float)
    rejected = results[scout.series_instance_uid]
    assert rejected["status"] == "rejected" and "fewer than" in rejected["reason"]
    assert rejected["ich_volume_ml"] == 0.0 and rejected["site"] == "none"
    assert "ICH mL" in proc.stdout  # the table
