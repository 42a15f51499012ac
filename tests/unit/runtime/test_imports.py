"""Serving loads only what serving needs: no dicomnode.lab, no pytest, no hypothesis, no matplotlib.

Checked on the real entry points in fresh interpreters: ``dicomnode run`` on a study with the
shipped prediction models, and ``dicomnode worker`` until it is ready. At exit each process
reports which of the watched packages it holds in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dicomnode.lab.synth import make_study
from tests.conftest import REPO

# Runs the CLI as `python -m dicomnode.cli ...` would, and prints at exit what it loaded.
_PROBE = """
import atexit, json, runpy, sys
WATCHED = ("dicomnode.lab", "pytest", "_pytest", "hypothesis", "matplotlib", "dicomnode.pipeline",
           "skops.io", "PIL.ImageFont")
def report():
    loaded = sorted({w for w in WATCHED for m, mod in list(sys.modules.items())
                     if mod is not None and (m == w or m.startswith(w + "."))})
    print("LOADED " + json.dumps(loaded), file=sys.stderr, flush=True)
atexit.register(report)
sys.argv = ["dicomnode"] + sys.argv[1:]
runpy.run_module("dicomnode.cli", run_name="__main__")
"""
# matplotlib is only where the overlay fonts are found (dicomnode.encode.text), never imported.
FORBIDDEN = {"dicomnode.lab", "pytest", "_pytest", "hypothesis", "matplotlib"}


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "c.toml"
    # Prediction on with the shipped bundles: loading them (skops) is the path that once pulled
    # in pytest through scikit-learn's test helpers.
    config.write_text(f'[segmentation]\nbackend = "threshold"\n[prediction]\nenabled = true\n'
                      f'he_model = "{REPO / "models/he-multitask-he"}"\n'
                      f'pse_model = "{REPO / "models/pse-psenet"}"\n')
    return config


def _loaded(stderr: str) -> set[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("LOADED ")]
    assert lines, stderr[-2000:]
    return set(json.loads(lines[-1][len("LOADED "):]))


def test_dicomnode_run_imports_no_lab_and_no_test_framework(tmp_path: Path) -> None:
    make_study(tmp_path / "in", seed=3, hemorrhage_ml=12.0, matrix=64)
    proc = subprocess.run([sys.executable, "-c", _PROBE, "run", str(tmp_path / "in"), "--out",
                           str(tmp_path / "out"), "--config", str(_config(tmp_path))],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = _loaded(proc.stderr)
    assert {"dicomnode.pipeline", "skops.io", "PIL.ImageFont"} <= loaded  # the serving path really ran
    assert not loaded & FORBIDDEN


def test_worker_imports_no_lab_and_no_test_framework(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _PROBE, "worker", "--config",
                             str(_config(tmp_path)), "--storage", str(tmp_path / "s")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 300
        assert proc.stdout is not None
        for line in proc.stdout:
            if "ready" in line or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    loaded = _loaded(stderr)
    assert {"dicomnode.pipeline", "skops.io"} <= loaded
    assert not loaded & FORBIDDEN
