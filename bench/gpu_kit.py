"""Build the GPU check kit: everything a machine with only PyTorch and numpy lacks.

    .venv/bin/python bench/gpu_kit.py --out .gpu-kit            # make gpu-kit
    .venv/bin/python bench/gpu_kit.py --out /tmp/kit --quick    # crops, 2 BLAST-CT models

The kit (git-ignored, at most 52 MiB so that it travels with the repository) holds:

- ``wheels/``: MONAI's wheel (``pip download --no-deps monai==<installed version>``); the
  inference code needs nothing else beyond torch and numpy;
- ``unet/``: the unet bundle (``models/ich-unet-synth``) as shipped;
- ``blast/``: the BLAST-CT v1 weights from ``../shared/models/blast-ct-v1/weights`` with their
  licence, convolution weights stored in fp16 (BatchNorm and PReLU in fp32), 2.1 MB per model
  instead of 4.2 MB; ``gpu_check.py`` loads them back into fp32, so its fp32 figures use
  fp16-rounded convolution weights. Model 1 is also kept as published (``model_1.fp32.pt``),
  so that the check reports what that rounding changes;
- ``inputs/{1mm,5mm}.npz``: one synthetic 512-matrix phantom (``dicomnode.lab.synth.make_study``)
  at 1 mm and 5 mm slices, loaded by the node's loader and preprocessed by the backends' own
  functions up to the model grids: for the unet the resampled HU on its grid clipped to its
  window (float32), for BLAST-CT the 1 mm grid clipped to [-15, 100] HU (int8, exact: the
  normalised array is rebuilt bit for bit), each with the truth labels on that grid;
- ``manifest.json``: versions, seeds, shapes and the SHA-256 of every file.

``--quick`` makes a small kit for the tests: 256-matrix phantoms cropped around the haematoma
to the sizes ``gpu_check.py --quick`` uses, and BLAST-CT models 1 and 2 only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import QUICK_BLAST_ZYX, QUICK_ENSEMBLE, QUICK_UNET_ZYX, crop_centred, sha256  # noqa: E402

BLAST_DIR = REPO.parent / "shared" / "models" / "blast-ct-v1"
UNET_DIR = REPO / "models" / "ich-unet-synth"
MAX_MIB = 52.0
STUDIES = {"1mm": 1.0, "5mm": 5.0}  # name -> slice thickness (mm)
PHANTOM = {"seed": 11, "hemorrhage_ml": 30.0, "site": "lobar"}


def fetch_wheel(dest: Path, wheel: Path | None) -> Path:
    """MONAI's wheel for the installed version: ``--wheel`` if given, else ``pip download``."""
    dest.mkdir(parents=True)
    if wheel is not None:
        return Path(shutil.copy2(wheel, dest))
    spec = f"monai=={version('monai')}"
    out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                          "--disable-pip-version-check", "-q", "-d", str(dest), spec],
                         capture_output=True, text=True)
    found = sorted(dest.glob("monai-*.whl"))
    if out.returncode != 0 or not found:
        raise SystemExit(f"pip download {spec} failed (give a wheel with --wheel):\n{out.stderr[-2000:]}")
    return found[0]


def store_blast(src: Path, dest: Path, numbers: list[int]) -> None:
    """Convolution weights to fp16, the rest as stored; upstream key names kept."""
    import torch

    dest.mkdir(parents=True)
    for k in numbers:
        state = torch.load(src / "weights" / f"model_{k}.pt", map_location="cpu", weights_only=True)
        half = {key: v.half() if key.endswith("conv.weight") else v for key, v in state.items()}
        torch.save(half, dest / f"model_{k}.pt")
    # Model 1 as published too (4.2 MB): gpu_check measures what the fp16 rounding changes.
    shutil.copy2(src / "weights" / "model_1.pt", dest / "model_1.fp32.pt")
    if (src / "LICENSE").is_file():
        shutil.copy2(src / "LICENSE", dest / "LICENSE")


def make_inputs(dest: Path, quick: bool) -> dict[str, dict]:
    """The phantom at each thickness on the unet and BLAST-CT grids, with its truth."""
    import SimpleITK as sitk

    from dicomnode.lab.synth import make_study
    from dicomnode.load import load_series
    from dicomnode.segment.blast_ct import as_reference_pixel_type, preprocess, reorient, resample_1mm
    from dicomnode.segment.bundle import load_bundle
    from dicomnode.segment.inference import BLAST_WINDOW_HU, blast_normalise
    from dicomnode.segment.unet import resample_to_spacing

    bundle = load_bundle(UNET_DIR, backend="unet")
    dest.mkdir(parents=True)
    matrix = 256 if quick else 512
    inputs = {}
    with tempfile.TemporaryDirectory(prefix="gpu-kit-") as tmp:
        for name, thickness in STUDIES.items():
            truth = make_study(Path(tmp) / name, matrix=matrix, thickness_mm=thickness, **PHANTOM)
            volume = load_series(sorted(truth.dicom_dir.glob("*.dcm")))
            labels = sitk.ReadImage(str(truth.label_path))

            def on(grid: sitk.Image, labels: sitk.Image = labels) -> np.ndarray:
                return sitk.GetArrayFromImage(sitk.Resample(labels, grid, sitk.Transform(),
                                                            sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

            grid = resample_to_spacing(volume.image, bundle.spacing_mm,
                                       antialias=bool(bundle.meta.get("antialias", False)))
            unet_hu = np.clip(sitk.GetArrayFromImage(grid), *bundle.hu_window).astype(np.float32)
            unet_truth = on(grid)
            iso = resample_1mm(reorient(as_reference_pixel_type(volume.image)))
            blast_hu = np.clip(sitk.GetArrayFromImage(iso), *BLAST_WINDOW_HU)
            if np.array_equal(blast_hu, np.round(blast_hu)):
                blast_hu = blast_hu.astype(np.int8)
            else:  # pragma: no cover - the synthetic HU are integers
                blast_hu = blast_hu.astype(np.float32)
            if not np.array_equal(blast_normalise(blast_hu), preprocess(volume.image)[0]):
                raise SystemExit(f"{name}: stored BLAST-CT input does not rebuild the normalised array")
            blast_truth = on(iso)
            if quick:
                unet_hu, unet_truth = crop_centred([unet_hu, unet_truth], unet_truth, QUICK_UNET_ZYX)
                blast_hu, blast_truth = crop_centred([blast_hu, blast_truth], blast_truth, QUICK_BLAST_ZYX)
            np.savez_compressed(dest / f"{name}.npz", unet_hu=unet_hu, unet_truth=unet_truth,
                                blast_hu=blast_hu, blast_truth=blast_truth)
            inputs[name] = {"file": f"inputs/{name}.npz", "thickness_mm": thickness, "matrix": matrix,
                            "native_size_xyz": list(volume.image.GetSize()),
                            "ich_volume_ml": round(truth.ich_volume_ml, 3),
                            "unet_shape_zyx": list(unet_hu.shape), "blast_shape_zyx": list(blast_hu.shape),
                            "cropped": quick}
    return inputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(REPO / ".gpu-kit"), help="kit folder (replaced)")
    ap.add_argument("--quick", action="store_true", help="small kit: crops, 2 BLAST-CT models")
    ap.add_argument("--blast-dir", default=str(BLAST_DIR), help="BLAST-CT bundle with weights/")
    ap.add_argument("--wheel", help="MONAI wheel to copy instead of pip download")
    ap.add_argument("--max-mib", type=float, default=MAX_MIB)
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    if out.exists():
        if any(out.iterdir()) and not (out / "manifest.json").is_file():
            raise SystemExit(f"{out} exists and is not a kit: not replacing it")
        shutil.rmtree(out)
    blast_dir = Path(args.blast_dir)
    if not (blast_dir / "weights" / "model_1.pt").is_file():
        raise SystemExit(f"BLAST-CT weights not found in {blast_dir / 'weights'}")
    numbers = list(range(1, (QUICK_ENSEMBLE if args.quick else 12) + 1))
    wheel = fetch_wheel(out / "wheels", Path(args.wheel) if args.wheel else None)
    shutil.copytree(UNET_DIR, out / "unet", ignore=shutil.ignore_patterns(".cache"))
    store_blast(blast_dir, out / "blast", numbers)
    inputs = make_inputs(out / "inputs", args.quick)
    files: dict[str, dict[str, Any]] = {
        p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(out.rglob("*")) if p.is_file()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or None
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick,
                "commit": commit, "bytes": sum(f["bytes"] for f in files.values()),
                "versions": {m: version(m) for m in ("torch", "monai", "numpy")},
                "wheels": [wheel.name], "phantom": PHANTOM, "inputs": inputs,
                "blast": {"models": numbers, "storage": "conv weights fp16, BatchNorm/PReLU fp32 "
                          "(loaded back into fp32)", "source": str(blast_dir)},
                "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    mib = (manifest["bytes"] + (out / "manifest.json").stat().st_size) / 2**20
    groups: dict[str, int] = {}
    for rel, f in files.items():
        groups[rel.split("/")[0]] = groups.get(rel.split("/")[0], 0) + f["bytes"]
    for name, n in sorted(groups.items()):
        print(f"  {name:8s} {n / 2**20:7.2f} MiB")
    print(f"kit {out}: {mib:.2f} MiB in {len(files) + 1} files ({time.perf_counter() - t0:.0f} s)")
    if mib > args.max_mib:
        print(f"kit is larger than {args.max_mib} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
