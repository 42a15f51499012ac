"""Viewer benchmark: last instance acknowledged -> the SEG drawn in OHIF (headless Chromium, CPU).

The viewer rig (dicomnode.lab.viewer: Orthanc with DICOMweb, OHIF 3.13.2 on one loopback origin,
``dicomnode serve --forward <Orthanc DICOMweb>``) receives a 5 mm synthetic study by DCMTK
``storescu``; the clock starts when storescu returns (the last instance acknowledged). Phases:

- delivered: every result stored in Orthanc by STOW-RS (``dicomnode status`` polled every 0.25 s);
- viewer: a fresh Chromium profile opens ``/viewer?StudyInstanceUIDs=..&initialSeriesInstanceUID=
  <SEG>`` (what ``make viewer`` prints) until the SEG's colour is on the viewport's canvas; its
  first image time is reported too.

    .venv/bin/python bench/viewer.py                       # unet and threshold, 3 runs each
    .venv/bin/python bench/viewer.py --backend threshold --runs 1
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomnode.lab.synth import make_study  # noqa: E402
from dicomnode.lab.viewer import ohif, page  # noqa: E402
from dicomnode.lab.viewer.browser import Browser  # noqa: E402
from dicomnode.lab.viewer.rig import ViewerRig  # noqa: E402

# A segment's colour (any of them: the CT is grey) on the viewport's canvas, a 2-D canvas the
# renderer copies into. OHIF opens on the first slice of the first segment, not always ICH's.
SEG_ON_CANVAS = (
    f"{page.VIEWPORTS}.some(e => {{ const c = e.viewport.canvas; const d = c.getContext('2d')"
    ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
    " for (let i = 0; i < d.length; i += 4) { const hi = Math.max(d[i], d[i + 1], d[i + 2]);"
    " const lo = Math.min(d[i], d[i + 1], d[i + 2]); if (hi - lo > 60) n++; }"
    " return n > 20; })")


def run_one(rig: ViewerRig, work: Path, seed: int, matrix: int) -> dict[str, float]:
    study = make_study(work / f"study-{seed}", seed=seed, hemorrhage_ml=25.0, site="lobar",
                       matrix=matrix, thickness_mm=5.0)
    acked = rig.send(study.dicom_dir)
    res = rig.wait_results(study.series_instance_uid, acked, timeout_s=900)
    delivered = time.monotonic()
    with Browser(width=1280, height=800) as b:
        opened = time.monotonic()
        first = page.open_study(b, rig.viewer_url(res.study_instance_uid, res.seg_series_uid), idle=False)
        b.wait_for(SEG_ON_CANVAS, timeout_s=300, interval_s=0.1, what="the SEG on the canvas")
        drawn = time.monotonic()
    return {"slices": study.n_slices, "delivered_s": delivered - acked, "first_image_s": first,
            "viewer_s": drawn - opened, "total_s": drawn - acked}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backend", action="append", help="node backend (repeatable; default unet, threshold)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--matrix", type=int, default=256)
    args = p.parse_args()
    # SIGTERM (or SIGINT, which a background shell ignores) unwinds the rigs: nothing left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ohif.fetch()
    rows = []
    for backend in args.backend or ["unet", "threshold"]:
        with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp, \
                ViewerRig(Path(tmp) / "rig", backend=backend) as rig:
            # One untimed study first: the worker loads its model on the first job.
            run_one(rig, Path(tmp), 100, args.matrix)
            runs = [run_one(rig, Path(tmp), 101 + i, args.matrix) for i in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append((backend, med, runs))
    print("| backend | study | last ack -> results in Orthanc | open -> first image | open -> SEG drawn "
          "(viewer) | last ack -> SEG drawn |\n|---|---|---:|---:|---:|---:|")
    for backend, med, _runs in rows:
        print(f"| {backend} | 5 mm, {int(med['slices'])} x {args.matrix}^2 | {med['delivered_s']:.1f} s | "
              f"{med['first_image_s']:.1f} s | {med['viewer_s']:.1f} s | **{med['total_s']:.1f} s** |")
    print(f"\nmedians of {args.runs} runs per backend after one untimed warm-up study; each run: "
          + "; ".join(f"{b}: " + ", ".join(f"{r['total_s']:.1f}" for r in runs) for b, _, runs in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
