"""The `synth` sub-command registers with argparse and writes a study."""

from __future__ import annotations

import argparse

from dicomnode.lab.synth.cli import register


def _parser():
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    return p


def test_synth_study_command(tmp_path, capsys):
    args = _parser().parse_args(
        [
            "synth",
            "study",
            "--out",
            str(tmp_path),
            "--matrix",
            "64",
            "--slices",
            "8",
            "--site",
            "deep",
            "--hemorrhage-ml",
            "10",
        ]
    )
    assert args.func(args) == 0
    assert len(list((tmp_path / "dicom").glob("*.dcm"))) == 8
    assert (tmp_path / "labels.nii.gz").exists() and (tmp_path / "truth.json").exists()
    assert "basal_ganglia" in capsys.readouterr().out


def test_synth_cohort_command(tmp_path):
    args = _parser().parse_args(["synth", "cohort", "--out", str(tmp_path), "--n", "2", "--matrix", "64"])
    assert args.func(args) == 0
    assert (tmp_path / "manifest.csv").exists() and (tmp_path / "manifest.json").exists()
