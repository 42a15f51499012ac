"""Phantom generation speed: seconds per synthetic study (render, write DICOM and labels).

Replaces timed tests: a study of a 64 matrix (16 slices) is what the unit tests make many
times; a 512 matrix at 5 mm and 1 mm is what the segmentation and end-to-end benches make.
Each size is made once to warm up, then ``--repeat`` times; the table gives the median.

    .venv/bin/python bench/synth.py
    .venv/bin/python bench/synth.py --sizes 64:5,512:5 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine_info  # noqa: E402  (bench/ is on sys.path when this file runs)

from dicomnode.lab.synth import make_study  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64:5,512:5,512:1",
                    help="matrix:thickness_mm pairs (64 uses 16 slices)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram']}, Python {m['python']}")
    print("| matrix | thickness | slices | s/study (median) | min | max |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        for k, pair in enumerate(args.sizes.split(",")):
            matrix_s, thickness_s = pair.split(":")
            matrix, thickness = int(matrix_s), float(thickness_s)
            extra = {"n_slices": 16} if matrix <= 64 else {}
            make_study(Path(tmp) / f"warm-{k}", seed=1, matrix=matrix, thickness_mm=thickness,
                       **extra)
            times, n = [], 0
            for r in range(args.repeat):
                t0 = time.perf_counter()
                truth = make_study(Path(tmp) / f"s-{k}-{r}", seed=1 + r, matrix=matrix,
                                   thickness_mm=thickness, hemorrhage_ml=20.0, **extra)
                times.append(time.perf_counter() - t0)
                n = truth.n_slices
            print(f"| {matrix} | {thickness:g} mm | {n} | {statistics.median(times):.2f} | "
                  f"{min(times):.2f} | {max(times):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
