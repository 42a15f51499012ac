"""Segmentation benchmark: quality on held-out phantoms and the real GE scan, and speed.

For each backend: ICH Dice and volume error on held-out synthetic phantoms (seeds from 900000,
never used in training) at 5 mm and 1 mm, the volume reported on phantoms without blood, the
volume reported on the real normal GE head CT in ../shared/data (its only real check), and
seconds per series (load, segment, measure) with peak memory, each backend in its own process.

    .venv/bin/python bench/segment.py                        # unet and threshold, 512 matrix
    .venv/bin/python bench/segment.py --backends unet --n 4 --matrix 256
    .venv/bin/python bench/segment.py --backends blast_ct --ensemble 1   # slow on CPU
    .venv/bin/python bench/segment.py --validation --backends unet --unet-model DIR

``--validation`` scores the tuning split instead (seeds from 800000, one phantom without blood
per thickness, no GE scan): model choices are made there, so the held-out figures and the GE
scan stay untouched by them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GE_DIR = REPO.parent / "shared" / "data" / "ge-head-ct-tilt"
HELD_OUT_SEED = 900000
VALIDATION_SEED = 800000
SITES = ("basal_ganglia", "thalamus", "lobar", "lobar_subcortical", "cerebellar", "brainstem")


def machine() -> str:
    from _common import machine_info  # bench/ is on sys.path when this file runs

    m = machine_info()
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{m['cpu']}, {m['cores']} cores, {m['ram']}{gpu}; Python {m['python']}"


def make_phantoms(root: Path, n: int, matrix: int, validation: bool = False) -> list[dict]:
    """Held-out phantoms: n with blood per thickness (5 and 1 mm), and 2 without per thickness.
    With ``validation``: the tuning split (other seeds, sites and IVH cases; 1 without blood)."""
    from dicomnode.lab.synth import make_study

    base, site_shift, ivh_rest, n_negative = ((VALIDATION_SEED, 2, 1, 1) if validation
                                              else (HELD_OUT_SEED, 0, 0, 2))
    cases = []
    for thickness in (5.0, 1.0):
        for i in range(n + n_negative):
            seed = base + int(thickness * 1000) + i
            negative = i >= n
            rng = np.random.default_rng(seed)
            volume_ml = None if negative else float(np.exp(rng.uniform(np.log(5), np.log(80))))
            folder = root / f"t{thickness:g}-{seed}"
            if not (folder / "truth.json").is_file():
                make_study(folder, seed=seed, matrix=matrix, thickness_mm=thickness,
                           hemorrhage_ml=volume_ml, site=SITES[(i + site_shift) % len(SITES)],
                           ivh=bool(i % 3 == ivh_rest))
            truth = json.loads((folder / "truth.json").read_text())
            cases.append({"folder": str(folder), "thickness_mm": thickness,
                          "negative": negative,
                          "truth_ich_ml": float(truth.get("ich_volume_ml") or 0.0),
                          "truth_ivh_ml": float(truth.get("ivh_volume_ml") or 0.0)})
    return cases


def run_backend(backend: str, cases: list[dict], ensemble: int, device: str,
                unet_model: str | None = None, with_ge: bool = True) -> dict:
    """In this (child) process: build the backend once, then time and score every case."""
    import SimpleITK as sitk

    from dicomnode.config import load_settings
    from dicomnode.load.volume import load_series
    from dicomnode.measure import measure
    from dicomnode.segment.registry import build_backend

    settings = load_settings(REPO / "tests" / "data" / "empty.toml")
    from dataclasses import replace

    seg = replace(settings.segmentation, backend=backend, device=device,
                  blast_ct_ensemble_size=ensemble)
    if unet_model:
        seg = replace(seg, unet_model=Path(unet_model))
    t0 = time.perf_counter()
    model = build_backend(seg)
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"backend": backend, "model_load_s": time.perf_counter() - t0, "cases": rows}
    for case in cases + ([{"folder": str(GE_DIR), "ge": True}] if with_ge else []):
        folder = Path(case["folder"])
        files = sorted((folder / "dicom").glob("*.dcm")) if not case.get("ge") else \
            sorted(folder.glob("*.dcm"))
        t = time.perf_counter()
        volume = load_series(files)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        labels = model.segment(volume)
        t_seg = time.perf_counter() - t
        t = time.perf_counter()
        m = measure(volume, labels)
        t_measure = time.perf_counter() - t
        row = {**case, "load_s": t_load, "segment_s": t_seg, "measure_s": t_measure,
               "ich_ml": m.ich_volume_ml, "ivh_ml": m.ivh_volume_ml,
               "slices": len(files)}
        if not case.get("ge") and not case.get("negative"):
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nii.gz")))
            pred = sitk.GetArrayFromImage(labels.image)
            if pred.shape == truth.shape:  # untilted phantoms: same grid
                a, b = pred == 1, truth == 1
                row["dice"] = float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
        rows.append(row)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def summarise(result: dict) -> dict:
    rows = result["cases"]
    summary = {"backend": result["backend"], "peak_rss_mb": round(result["peak_rss_mb"])}
    for thickness in (5.0, 1.0):
        pos = [r for r in rows if r.get("thickness_mm") == thickness and not r["negative"]]
        neg = [r for r in rows if r.get("thickness_mm") == thickness and r["negative"]]
        if pos:
            dices = [r["dice"] for r in pos if "dice" in r]
            errors = [abs(r["ich_ml"] - r["truth_ich_ml"]) for r in pos]
            ok = [abs(r["ich_ml"] - r["truth_ich_ml"]) <= max(1.0, 0.1 * r["truth_ich_ml"])
                  for r in pos]
            summary[f"{thickness:g}mm"] = {
                "n": len(pos), "dice_mean": round(float(np.mean(dices)), 3) if dices else None,
                "dice_min": round(float(np.min(dices)), 3) if dices else None,
                "abs_volume_error_ml_mean": round(float(np.mean(errors)), 2),
                "within_max_1ml_10pct": f"{sum(ok)}/{len(ok)}",
                "negatives_max_ml": round(max((r["ich_ml"] + r["ivh_ml"] for r in neg),
                                              default=0.0), 2),
                "seconds_load_segment_measure": round(float(np.median(
                    [r["load_s"] + r["segment_s"] + r["measure_s"] for r in pos])), 2),
                "seconds_segment": round(float(np.median([r["segment_s"] for r in pos])), 2),
                "slices": pos[0]["slices"],
            }
    # Per case, for the model card and for checking a summary by hand.
    summary["cases"] = [
        {"case": Path(r["folder"]).name, "truth_ich_ml": r.get("truth_ich_ml"),
         "ich_ml": round(r["ich_ml"], 2), "truth_ivh_ml": r.get("truth_ivh_ml"),
         "ivh_ml": round(r["ivh_ml"], 2),
         "dice": round(r["dice"], 3) if "dice" in r else None} for r in rows]
    ge = next((r for r in rows if r.get("ge")), None)
    if ge is not None:
        summary["ge_real_normal_ich_ivh_ml"] = round(ge["ich_ml"] + ge["ivh_ml"], 2)
        summary["ge_seconds"] = round(ge["load_s"] + ge["segment_s"] + ge["measure_s"], 2)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backends", default="unet,threshold")
    ap.add_argument("--n", type=int, default=6, help="phantoms with blood per thickness")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--ensemble", type=int, default=12, help="BLAST-CT models (1-12)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", help="where the phantoms are made once and reused "
                    "(default var/bench-segment, or var/val512 with --validation)")
    ap.add_argument("--validation", action="store_true",
                    help="the tuning split (seeds from 800000), without the GE scan")
    ap.add_argument("--unet-model", help="a unet bundle folder (default: the configured one)")
    ap.add_argument("--json", help="also write the summaries to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one backend in its own process, for a clean peak-memory figure
        spec = json.loads(Path(args.child).read_text())
        result = run_backend(spec["backend"], spec["cases"], args.ensemble, args.device,
                             args.unet_model, with_ge=not args.validation)
        Path(args.child).write_text(json.dumps(result))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"dicomnode segmentation benchmark {time.strftime('%Y-%m-%d')}")
    console.print(f"machine: {machine()}")
    t = time.perf_counter()
    split = "validation" if args.validation else "held-out"
    data = args.data or str(REPO / "var" / ("val512" if args.validation else "bench-segment"))
    cases = make_phantoms(Path(data), args.n, args.matrix, validation=args.validation)
    console.print(f"{len(cases)} {split} phantoms ({args.matrix}x{args.matrix}) ready in "
                  f"{time.perf_counter() - t:.0f} s under {data}")
    summaries = []
    for backend in args.backends.split(","):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump({"backend": backend, "cases": cases}, fh)
        proc = subprocess.run([sys.executable, __file__, "--child", fh.name,
                               "--ensemble", str(args.ensemble), "--device", args.device,
                               *(["--validation"] if args.validation else []),
                               *(["--unet-model", args.unet_model] if args.unet_model else [])],
                              check=False)
        if proc.returncode:
            console.print(f"[red]{backend}: failed (exit {proc.returncode})")
            continue
        summaries.append(summarise(json.loads(Path(fh.name).read_text())))
        os.unlink(fh.name)
    table = Table(title=f"ICH segmentation on {split} phantoms" +
                  ("" if args.validation else " and the real GE scan"))
    for col in ("backend", "slices", "n", "Dice mean (min)", "|dV| mL", "within max(1 mL,10%)",
                "negatives max mL", "s/series (segment)", "GE real FP mL", "peak MB"):
        table.add_column(col)
    for s in summaries:
        for key in ("5mm", "1mm"):
            q = s.get(key)
            if not q:
                continue
            table.add_row(f"{s['backend']} {key}", str(q["slices"]), str(q["n"]),
                          f"{q['dice_mean']} ({q['dice_min']})",
                          str(q["abs_volume_error_ml_mean"]), q["within_max_1ml_10pct"],
                          str(q["negatives_max_ml"]),
                          f"{q['seconds_load_segment_measure']} ({q['seconds_segment']})",
                          str(s.get("ge_real_normal_ich_ivh_ml", "-")), str(s["peak_rss_mb"]))
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
