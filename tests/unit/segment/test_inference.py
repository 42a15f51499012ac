"""The array inference module: importable without the imaging stack, same device/precision policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dicomnode.segment.inference import (  # noqa: E402
    blast_runtime,
    select_device,
    unet_autocast_dtype,
)

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("SimpleITK", "pydicom", "sqlalchemy", "scipy", "monai", "dicomnode.domain", "dicomnode.segment.base")


def test_importing_inference_leaves_the_imaging_stack_out(tmp_path: Path) -> None:
    code = ("import json, sys\n"
            "import dicomnode.segment.inference\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    modules = set(json.loads(out.stdout))
    assert "torch" in modules and "dicomnode.segment.blast_ct_net" in modules
    loaded = sorted(m for m in modules for heavy in HEAVY if m == heavy or m.startswith(heavy + "."))
    assert loaded == []


def test_importing_the_pipeline_does_not_import_torch(tmp_path: Path) -> None:
    code = "import sys, dicomnode.segment.base, dicomnode.segment.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_default_precision_per_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert unet_autocast_dtype(cpu) is None and unet_autocast_dtype(cuda) is torch.bfloat16
    assert blast_runtime(cpu) == (None, torch.contiguous_format)
    assert blast_runtime(cpu, half_precision=True)[0] is torch.bfloat16
    assert blast_runtime(cpu, channels_last=True)[1] is torch.channels_last_3d
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="tpu"):
        select_device("tpu")
