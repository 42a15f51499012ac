"""``dicomnode demo`` on the shipped configuration: the default backend (unet, with the bundle in
models/) segments a synthetic haemorrhage, and SEG, SR and overlays reach the loopback PACS.

The shipped configuration's database is SQLite in the storage folder, so this runs on SQLite only;
the same path on PostgreSQL is tests/e2e/test_orthanc_e2e.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dicomnode.config import load_settings
from dicomnode.db.queries import series_status
from dicomnode.db.session import make_sessions
from dicomnode.lab.demo import run_demo
from tests.conftest import REPO


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent")
def test_demo_delivers_a_unet_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(REPO / "config" / "dicomnode.toml")
    assert settings.segmentation.backend == "unet"  # the shipped default

    assert run_demo(settings, tmp_path / "out", matrix=128, work=tmp_path / "work",
                    timeout_s=300) == 0

    printed = capsys.readouterr().out
    assert "PACS: Orthanc" in printed
    (result_file,) = (tmp_path / "work" / "storage" / "_results").glob("*/v1/result.json")
    record = json.loads(result_file.read_text())
    assert record["backend"] == "unet" and record["model"] == "ich-unet-synth"
    truth = json.loads((tmp_path / "work" / "study" / "truth.json").read_text())
    # the demo phantom holds 30 mL: the unet's held-out volume error is a few mL
    assert abs(record["ich_volume_ml"] - truth["ich_volume_ml"]) <= 0.2 * truth["ich_volume_ml"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    # every output acknowledged by Orthanc, read from the node's database (not the printed table)
    demo = replace(settings, storage=replace(settings.storage, path=tmp_path / "work" / "storage"))
    (row,) = series_status(make_sessions(demo.database_url))
    assert row["delivery"]["pending"] == 0 and row["delivery"]["failed"] == 0
    assert row["delivery"]["sent"] >= 4  # SEG, SR, at least one overlay and the summary image
