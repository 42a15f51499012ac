"""BLAST-CT: does the fast path (half precision, skipped empty patches, batches) keep the result?

For each of a few 512-matrix phantoms, the chosen BLAST-CT models run on a 120 mm crop around
the haematoma along the reference path (fp32, every patch, batch 1) and along faster ones:
``skip`` (fp32, empty patches skipped, batch 8) and ``fast`` (bf16/fp16 autocast as well), so
the effect of each change is seen on its own. Prints seconds per path, per-class volumes with
their relative difference, and lesion Dice against the reference (the issue's bar: volumes
within 1 %, Dice >= 0.99). On a CPU without bf16 instructions half precision
is emulated and slower: the timing columns mean something on a GPU, the agreement columns on both.

    .venv/bin/python bench/blast_precision.py                       # model 1, 1 phantom
    .venv/bin/python bench/blast_precision.py --paths skip          # CPU: leave out bf16
    .venv/bin/python bench/blast_precision.py --models 1,2,3 --phantoms 3 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._common import machine_info  # noqa: E402

MODEL_DIR = REPO.parent / "shared" / "models" / "blast-ct-v1"
PHANTOMS = [(1, 30.0, "lobar"), (2, 25.0, "basal_ganglia"), (3, 40.0, "lobar_subcortical")]


def run(backend, crop) -> tuple[np.ndarray, float]:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    labels = backend.segment_image(crop)
    return sitk.GetArrayFromImage(labels), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="1", help="comma-separated BLAST-CT model numbers (1-12)")
    ap.add_argument("--phantoms", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: default)")
    ap.add_argument("--model-dir", default=str(MODEL_DIR))
    ap.add_argument("--paths", default="skip,fast", help="compared with fp32: skip, fast")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    import SimpleITK as sitk
    import torch
    from rich.console import Console
    from rich.table import Table

    from dicomnode.domain import LABELS
    from dicomnode.lab.synth import make_study
    from dicomnode.segment.blast_ct import BlastCTBackend, crop_around

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [int(m) for m in args.models.split(",")]
    common = {"models": models, "device": args.device}
    reference = BlastCTBackend(Path(args.model_dir), batch_size=1, half_precision=False,
                               skip_empty_patches=False, **common)
    paths = {name: BlastCTBackend(Path(args.model_dir), batch_size=8,
                                  half_precision=name == "fast", skip_empty_patches=True,
                                  **common)
             for name in args.paths.split(",")}
    if not set(paths) <= {"skip", "fast"}:
        ap.error(f"--paths {args.paths!r}: expected skip and/or fast")
    console = Console()
    m = machine_info()
    console.print(f"BLAST-CT fast path vs fp32 reference, models {models}, device "
                  f"{reference.device}, {time.strftime('%Y-%m-%d')}")
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram']}; autocast of the "
                  f"fast path: {torch.bfloat16 if reference.device.type == 'cpu' else 'bf16/fp16'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, volume_ml, site in PHANTOMS[: args.phantoms]:
            truth = make_study(Path(tmp) / str(seed), seed=seed, hemorrhage_ml=volume_ml,
                               site=site, matrix=512, thickness_mm=5.0)
            centre = json.loads(truth.truth_path.read_text())["lesion"]["centre_lps_mm"]
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(truth.dicom_dir)))
            crop = crop_around(sitk.Cast(reader.Execute(), sitk.sitkFloat32), centre)
            voxel_ml = float(np.prod(crop.GetSpacing())) / 1000.0
            ref, t_ref = run(reference, crop)
            for name, backend in paths.items():
                got, t_path = run(backend, crop)
                lesion_ref, lesion_got = ref > 0, got > 0
                dice = 2 * (lesion_ref & lesion_got).sum() / max(1, lesion_ref.sum()
                                                                 + lesion_got.sum())
                row = {"phantom": f"seed {seed} {site} {truth.ich_volume_ml:.1f} mL",
                       "path": name, "seconds_fp32": round(t_ref, 1),
                       "seconds_path": round(t_path, 1), "patches": backend.last_stats["patches"],
                       "run": backend.last_stats["run"], "lesion_dice": round(float(dice), 4),
                       "volumes_ml": {}}
                for value, label in LABELS.items():
                    if value == 0:
                        continue
                    a = float((ref == value).sum()) * voxel_ml
                    b = float((got == value).sum()) * voxel_ml
                    rel = abs(b - a) / a * 100 if a > 0 else (0.0 if b == 0 else float("inf"))
                    row["volumes_ml"][label] = {"fp32": round(a, 3), "path": round(b, 3),
                                                "diff_pct": round(rel, 2)}
                rows.append(row)
    table = Table(title="faster paths vs the fp32 reference (every patch, batch 1)")
    for col in ("phantom", "path", "s fp32", "s path", "patches run/all", "lesion Dice",
                "ICH mL fp32/path (diff %)", "extra-axial mL", "oedema mL"):
        table.add_column(col)
    for r in rows:
        v = r["volumes_ml"]
        table.add_row(r["phantom"], r["path"], str(r["seconds_fp32"]), str(r["seconds_path"]),
                      f"{r['run']:.0f}/{r['patches']:.0f}", str(r["lesion_dice"]),
                      *(f"{v[k]['fp32']}/{v[k]['path']} ({v[k]['diff_pct']})"
                        for k in ("ICH", "extra-axial", "oedema")))
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
