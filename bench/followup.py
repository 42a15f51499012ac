"""Follow-up comparison benchmark: seconds per comparison for synthetic baseline + repositioned
follow-up pairs (truth label maps), split as the pipeline spends them:

- ``load prior``: the prior's CT from its files (``load_series``);
- ``register + measure``: ``compare_with_plane`` (rigid registration, volumes, change, the prior
  resampled onto the follow-up's key slice);
- ``outputs``: the comparison key image (``build_comparison_image``, written with pydicom) and
  the comparison added to the follow-up's SR (``add_comparison``); the SEG and SR themselves
  are made for every scan and not counted.

    .venv/bin/python bench/followup.py                    # 5 mm, 512 matrix, 3 pairs
    .venv/bin/python bench/followup.py --matrix 512 --thickness 1 --n 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.brain import image_brain_mask  # noqa: E402
from dicomnode.compare import ExpansionRule, compare_with_plane  # noqa: E402
from dicomnode.domain import ICH, ComparedPrior, FollowupScan, LabelMap  # noqa: E402
from dicomnode.encode import build_seg, build_sr  # noqa: E402
from dicomnode.encode.comparison_image import build_comparison_image  # noqa: E402
from dicomnode.encode.sr_followup import add_comparison  # noqa: E402
from dicomnode.lab.synth.study import StudyTruth  # noqa: E402
from dicomnode.load.volume import load_series  # noqa: E402
from dicomnode.measure import measure  # noqa: E402
from tests.followup_cases import followup_pair  # noqa: E402


def _labels(truth: StudyTruth, image: sitk.Image) -> LabelMap:
    lab = sitk.Cast(sitk.ReadImage(str(truth.label_path)), sitk.sitkUInt8)
    lab.CopyInformation(image)
    return LabelMap(image=lab, backend="truth", model="truth", model_version="1",
                    synthetic_training=True)


def _one(base: StudyTruth, follow: StudyTruth, out: Path) -> dict[str, float | str]:
    paths = sorted(follow.dicom_dir.glob("*.dcm"))
    volume = load_series(paths)
    labels = _labels(follow, volume.image)
    sources = [pydicom.dcmread(p) for p in paths]
    m = measure(volume, labels)
    seg = build_seg(sources, volume, labels, version=1, software_version="bench")
    sr = build_sr(sources, seg, m, labels, version=1, software_version="bench")
    image_brain_mask(volume.image)  # the pipeline has it from segmentation already
    current = FollowupScan(follow.series_instance_uid,
                           datetime.fromisoformat(follow.details["acquired"]), volume.image,
                           labels.image)
    t0 = time.perf_counter()
    prior_image = load_series(sorted(base.dicom_dir.glob("*.dcm"))).image
    prior = FollowupScan(base.series_instance_uid, datetime.fromisoformat(base.details["acquired"]),
                         prior_image, sitk.ReadImage(str(base.label_path)), 0.3)
    t1 = time.perf_counter()
    c, plane = compare_with_plane(prior, current, ExpansionRule(), key_slice=m.largest_area_slice)
    t2 = time.perf_counter()
    compared = ComparedPrior(c, plane)
    key = build_comparison_image(sources, volume, labels, compared, version=1)
    key.save_as(out / "comparison.dcm", enforce_file_format=True)
    add_comparison(sr, compared, seg, version=1)
    t3 = time.perf_counter()
    ich = int((sitk.GetArrayViewFromImage(labels.image) == ICH).sum())
    return {"slices": volume.image.GetSize()[2], "truth": follow.ich_volume_ml - base.ich_volume_ml,
            "change": c.ich_change_ml, "corr": c.registration.correlation,
            "trusted": str(c.registration.trusted), "load": t1 - t0, "register": t2 - t1,
            "outputs": t3 - t2, "total": t3 - t0, "ich_voxels": ich}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--thickness", type=float, default=5.0)
    args = ap.parse_args()
    print(f"{args.matrix} matrix, {args.thickness:g} mm, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| pair | slices | growth mL (truth) | change mL | correlation | trusted | load prior s "
          "| register + measure s | outputs s | total s |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            base, follow = followup_pair(Path(tmp) / str(i), seed=900100 + i, baseline_ml=25.0,
                                         growth_ml=4.0 + 6.0 * i, matrix=args.matrix,
                                         thickness_mm=args.thickness)
            r = _one(base, follow, Path(tmp) / str(i))
            totals.append(float(r["total"]))
            print(f"| {i} | {r['slices']} | {r['truth']:.2f} | {r['change']:.2f} | {r['corr']:.3f} "
                  f"| {r['trusted']} | {r['load']:.2f} | {r['register']:.2f} | {r['outputs']:.2f} "
                  f"| {r['total']:.2f} |")
    print(f"median total {float(np.median(totals)):.2f} s, load average now "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
