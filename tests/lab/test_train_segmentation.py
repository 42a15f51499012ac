"""Training inputs: reproducible synthetic cases and the `train segmentation` options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dicomnode.lab.synth as synth
from dicomnode.cli import main
from dicomnode.lab.train_segmentation import TrainConfig, is_synthetic_case, prepare, synth_cases


def _record(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, Any]]:
    made: dict[int, dict[str, Any]] = {}

    def fake_make_study(folder: Path, *, seed: int, **kw: Any) -> None:
        folder.mkdir(parents=True)
        (folder / "labels.nii.gz").write_bytes(b"")
        made[seed] = kw

    monkeypatch.setattr(synth, "make_study", fake_make_study)
    return made


def test_a_resumed_run_makes_the_same_cases(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    made = _record(monkeypatch)
    synth_cases(tmp_path / "whole", 6, seed=7000, thicknesses_mm=(5.0, 1.25))
    whole = dict(made)
    made.clear()
    for seed in (7000, 7001):  # an interrupted run left the first two cases
        (tmp_path / "resumed" / f"case-{seed:06d}").mkdir(parents=True)
        (tmp_path / "resumed" / f"case-{seed:06d}" / "labels.nii.gz").write_bytes(b"")
    folders = synth_cases(tmp_path / "resumed", 6, seed=7000, thicknesses_mm=(5.0, 1.25))
    assert len(folders) == 6 and sorted(made) == [7002, 7003, 7004, 7005]
    assert all(made[s] == whole[s] for s in made)
    assert {kw["thickness_mm"] for kw in whole.values()} <= {5.0, 1.25}


def test_only_dicomnode_synth_folders_count_as_synthetic(tmp_path: Path) -> None:
    synthetic, real, broken = (tmp_path / n for n in ("synthetic", "real", "broken"))
    for folder in (synthetic, real, broken):
        folder.mkdir()
    (synthetic / "truth.json").write_text(json.dumps({"generator": "dicomnode.lab.synth"}))
    (broken / "truth.json").write_text("{not json")
    assert is_synthetic_case(synthetic)
    assert not is_synthetic_case(real) and not is_synthetic_case(broken)


def test_train_command_records_grid_window_and_synthetic_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synth_cases(tmp_path / "data", 2, seed=900100, matrix=64)
    out = tmp_path / "bundle"
    args = ["train", "segmentation", "--data", str(tmp_path / "data"), "--out", str(out),
            "--epochs", "1", "--iterations", "1", "--batch-size", "1", "--threads", "1",
            "--filters", "4,8,16", "--device", "cpu"]
    assert main([*args, "--spacing", "4,4"]) == 1
    assert "--spacing needs 3" in capsys.readouterr().err
    assert main([*args, "--spacing", "4,4,5", "--hu-window=-20,200"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["spacing_mm"] == [4.0, 4.0, 5.0] and meta["hu_window"] == [-20.0, 200.0]
    # Phantoms passed as --data still mark the bundle (and its SEG/SR) as synthetic.
    assert meta["synthetic_training"] is True
    assert meta["training"]["data"].startswith("2 synthetic phantoms (dicomnode.lab.synth)")


def test_the_preparation_cache_follows_grid_and_window(tmp_path: Path) -> None:
    case = synth_cases(tmp_path / "data", 1, seed=900101, matrix=64)
    default = prepare(case, TrainConfig(), tmp_path / "cache")
    wide = prepare(case, TrainConfig(hu_window=(-20.0, 200.0)), tmp_path / "cache")
    coarse = prepare(case, TrainConfig(spacing_mm=(4.0, 4.0, 5.0)), tmp_path / "cache")
    assert len({default[0], wide[0], coarse[0]}) == 3  # none reuses another's array
    assert prepare(case, TrainConfig(), tmp_path / "cache") == default
    img_default, img_wide = np.load(default[0])["image"], np.load(wide[0])["image"]
    # Bone clips at 1.0 in both; soft tissue sits lower in the wider window.
    assert img_default.max() == 1.0 and img_wide.max() == 1.0
    assert np.mean(img_wide) < np.mean(img_default)
