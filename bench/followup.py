"""Follow-up comparison benchmark: seconds per ``compare_scans`` (rigid registration, volumes,
change) for synthetic baseline + repositioned follow-up pairs, on the truth label maps.

    .venv/bin/python bench/followup.py                    # 5 mm, 512 matrix, 3 pairs
    .venv/bin/python bench/followup.py --matrix 256 --thickness 1 --n 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.brain import image_brain_mask  # noqa: E402
from dicomnode.compare import ExpansionRule, compare_scans  # noqa: E402
from dicomnode.domain import FollowupScan  # noqa: E402
from dicomnode.lab.synth.study import StudyTruth  # noqa: E402
from dicomnode.load.volume import load_series  # noqa: E402
from tests.followup_cases import followup_pair  # noqa: E402


def _scan(truth: StudyTruth) -> FollowupScan:
    volume = load_series(sorted(truth.dicom_dir.glob("*.dcm")))
    return FollowupScan(truth.series_instance_uid, datetime.fromisoformat(truth.details["acquired"]),
                        volume.image, sitk.ReadImage(str(truth.label_path)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--thickness", type=float, default=5.0)
    args = ap.parse_args()
    print("| pair | growth mL (truth) | change mL | correlation | trusted | s (prior mask too) |")
    print("|---|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            base, follow = followup_pair(Path(tmp) / str(i), seed=900100 + i, baseline_ml=25.0,
                                         growth_ml=4.0 + 6.0 * i, matrix=args.matrix,
                                         thickness_mm=args.thickness)
            prior, current = _scan(base), _scan(follow)
            image_brain_mask(current.image)  # the pipeline has it from segmentation already
            start = time.perf_counter()
            c = compare_scans(prior, current, ExpansionRule())
            seconds = time.perf_counter() - start
            print(f"| {i} | {follow.ich_volume_ml - base.ich_volume_ml:.2f} | {c.ich_change_ml:.2f} "
                  f"| {c.registration.correlation:.3f} | {c.registration.trusted} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
