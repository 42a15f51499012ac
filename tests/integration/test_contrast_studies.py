"""Contrast studies sent as a scanner would (DCMTK storescu) are refused, with the reason recorded.

The studies are synthetic phantoms (dicomnode.lab.synth) given the headers of a CT angiogram and
of a perfusion series; a plain non-contrast series of the same kind is analysed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.db.models import Series
from dicomnode.lab.synth import make_study
from dicomnode.runtime.service import Node
from tests.conftest import requires


def _cta(folder: Path) -> str:
    truth = make_study(folder, seed=31, hemorrhage_ml=None, matrix=64)
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent = "IOPAMIDOL 370"
        ds.ContrastBolusRoute = "IV"
        ds.SeriesDescription = "CTA Head"
        ds.save_as(path)
    return truth.series_instance_uid


def _perfusion(folder: Path) -> str:
    """Four passes over the same positions, as a perfusion scan acquires them (no contrast tags)."""
    truth = make_study(folder / "src", seed=32, hemorrhage_ml=None, matrix=64)
    out = folder / "perf"
    out.mkdir(parents=True)
    for path in sorted((folder / "src").rglob("*.dcm")):
        for phase in range(4):
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.AcquisitionNumber = phase + 1
            ds.SeriesDescription = "Head 5mm"
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm")
    return truth.series_instance_uid


def _states(node: Node, timeout_s: float = 60) -> dict[str, tuple[str, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        with node.sessions() as s:
            rows = {r.series_instance_uid: (r.state, r.reason) for r in s.scalars(select(Series))}
        if rows and all(state != "receiving" for state, _ in rows.values()):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@requires("storescu")
def test_cta_and_perfusion_sent_by_storescu_are_refused_for_contrast(db_node: Node,
                                                                     tmp_path: Path) -> None:
    """On SQLite and on PostgreSQL (``db_node``): the verdict and its reason are stored rows."""
    node = db_node
    cta, perfusion = _cta(tmp_path / "cta"), _perfusion(tmp_path / "perfusion")
    env = {**os.environ, "TCP_NODELAY": "1"}
    for folder in (tmp_path / "cta", tmp_path / "perfusion" / "perf"):
        subprocess.run(["storescu", "-R", "+sd", "+r", "+sp", "*.dcm", "-aec", "DICOMNODE", "127.0.0.1",
                        str(node.port), f"{folder}/"], env=env, check=True, timeout=120,
                       capture_output=True)
    rows = _states(node)
    assert rows[cta] == ("rejected", "contrast: Contrast/Bolus Agent 'IOPAMIDOL 370'")
    state, reason = rows[perfusion]
    assert state == "rejected"
    assert reason.startswith("contrast: time-resolved series (4.0 planes per position from 4")


def test_dicomnode_run_refuses_a_cta_and_analyses_the_plain_series(tmp_path: Path) -> None:
    cta = _cta(tmp_path / "in" / "cta")
    plain = make_study(tmp_path / "in" / "plain", seed=33, hemorrhage_ml=15.0, matrix=64)
    config = tmp_path / "c.toml"
    config.write_text('[segmentation]\nbackend = "threshold"\n[prediction]\nenabled = false\n')
    proc = subprocess.run([sys.executable, "-m", "dicomnode.cli", "run", str(tmp_path / "in"),
                           "--out", str(tmp_path / "out"), "--config", str(config)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    refused = json.loads((tmp_path / "out" / cta / "result.json").read_text())
    assert refused["status"] == "rejected" and refused["reason"].startswith("contrast: ")
    assert refused["ich_volume_ml"] == 0.0 and not (tmp_path / "out" / cta / "seg.dcm").exists()
    done = json.loads((tmp_path / "out" / plain.series_instance_uid / "result.json").read_text())
    assert done["status"] == "done"
