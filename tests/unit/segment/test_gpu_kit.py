"""The GPU check kit runs without the development environment.

Builds a ``--quick`` kit, then runs ``bench/gpu_check.py --device cpu --quick`` from another
folder with a fresh virtual environment in which only torch, numpy and torch's own runtime
dependencies are importable (symlinked from this environment through a ``.pth`` file, which is
what ``pip install torch numpy`` would give, without the download).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MODEL_DIR = REPO.parent / "shared" / "models" / "blast-ct-v1"
# torch, numpy and what `pip install torch` brings (Requires-Dist of the torch wheel)
CLEAN_DISTS = ("torch", "numpy", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2",
               "markupsafe", "fsspec", "filelock")
ABSENT = ("monai", "scipy", "SimpleITK", "pydicom", "sqlalchemy", "dicomnode", "pytest")

pytestmark = [
    pytest.mark.skipif(not (MODEL_DIR / "weights" / "model_1.pt").is_file(),
                       reason=f"BLAST-CT weights not in {MODEL_DIR / 'weights'}"),
    pytest.mark.timeout(600),
]


def clean_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONNOUSERSITE": "1"}


def torch_only_venv(root: Path) -> Path:
    """A new venv whose only third-party packages are CLEAN_DISTS; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, env=clean_env()).stdout.strip()
    deps = root / "deps"
    deps.mkdir()
    for name in CLEAN_DISTS:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pytest.skip(f"{name} is not installed in this environment")
        tops = {f.parts[0] for f in dist.files or () if f.parts[0] not in ("..", "__pycache__")}
        for top in sorted(tops):
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (deps / top).exists():
                (deps / top).symlink_to(src)
    (Path(purelib) / "torch_only.pth").write_text(f"{deps}\n")
    return python


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-kit") / "kit"
    build = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_kit.py"), "--out", str(out), "--quick"],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "pip download" in build.stderr + build.stdout:
        pytest.skip(f"MONAI wheel not obtainable here: {(build.stderr + build.stdout)[-300:]}")
    assert build.returncode == 0, build.stdout + build.stderr
    assert "MiB" in build.stdout
    return out


def test_quick_kit_is_small_and_described(kit: Path) -> None:
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["quick"] is True and manifest["blast"]["models"] == [1, 2]
    assert manifest["bytes"] < 52 * 2**20
    assert sorted(manifest["inputs"]) == ["1mm", "5mm"]
    assert [w.startswith("monai-") for w in manifest["wheels"]] == [True]
    on_disk = {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()}
    assert on_disk == set(manifest["files"]) | {"manifest.json"}


def test_gpu_check_runs_with_torch_and_numpy_only(kit: Path, tmp_path: Path) -> None:
    python = torch_only_venv(tmp_path)
    names = CLEAN_DISTS[:2] + ABSENT
    probe = ("import importlib.util as u, json; "
             f"print(json.dumps({{m: bool(u.find_spec(m)) for m in {names}}}))")
    found = json.loads(subprocess.run([str(python), "-c", probe], check=True, capture_output=True,
                                      text=True, env=clean_env(), cwd=tmp_path).stdout)
    assert found == {"torch": True, "numpy": True} | {m: False for m in ABSENT}

    out = tmp_path / "check.json"
    run = subprocess.run([str(python), str(REPO / "bench" / "gpu_check.py"), "--kit", str(kit),
                          "--device", "cpu", "--quick", "--out", str(out)],
                         capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=480)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "BLAST-CT 2 models" in run.stdout
    r = json.loads(out.read_text())
    assert {"device", "environment", "default_configuration", "unet", "blast_ct", "pytest_gpu",
            "targets", "wall_s"} <= set(r)
    env = r["environment"]
    assert env["torch"] and env["cuda"] is None and "gpu-check-" in env["monai_from"]
    assert r["default_configuration"]["device"] == "cpu"
    assert r["default_configuration"]["unet_precision"] == "fp32"
    assert r["default_configuration"]["blast_ct_precision"] == "fp32"
    assert r["pytest_gpu"]["status"] == "skipped" and "pytest" in r["pytest_gpu"]["reason"]

    for study in ("1mm", "5mm"):
        u = r["unet"][study]
        for prec in ("fp32", "bf16"):
            assert u[prec]["seconds"] > 0 and u[prec]["repeats"] == 1
            assert 0.7 <= u[prec]["ich_dice_vs_truth"] <= 1  # input and truth lie on one grid
        assert 0.95 <= u["ich_dice_fp32_vs_bf16"] <= 1 and 0 <= u["lesion_dice_fp32_vs_bf16"] <= 1

        b = r["blast_ct"][study]
        assert b["shape_zyx"] == [29, 29, 29]
        for cfg in ("1 model", "2 models"):
            res = b[cfg]
            assert res["patches"] == {"patches": 1, "run": 1, "uniform": 0}
            assert 0.9 <= res["lesion_dice_fp32_vs_half"] <= 1
            for prec in ("fp32", "half"):
                assert res[prec]["seconds"] > 0
                assert 0 <= res[prec]["ich_dice_vs_truth"] <= 1 and 0 <= res[prec]["blood_dice_vs_truth"] <= 1
                assert sum(res[prec]["volumes_ml"].values()) > 0
        assert 0.99 <= b["weight_rounding"]["lesion_dice"] <= 1
    assert r["blast_ct"]["half_dtype"] == "bfloat16" and r["targets"]["applies"] is False


def test_gpu_check_refuses_a_changed_kit(kit: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "kit"
    shutil.copytree(kit, copy)
    with (copy / "inputs" / "1mm.npz").open("ab") as f:
        f.write(b"x")
    run = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--kit", str(copy),
                          "--device", "cpu", "--quick", "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "inputs/1mm.npz missing or changed" in run.stderr
    assert not (tmp_path / "x.json").exists()
