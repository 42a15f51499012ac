"""`dicomnode synth study|cohort`: write synthetic head CT studies and cohorts."""

from __future__ import annotations

import argparse
from pathlib import Path

from .dicom_io import COMPRESSIONS
from .lesion import SITE_ALIASES, SITES


def register(subparsers) -> None:
    """Add the ``synth`` sub-command (with ``study`` and ``cohort``) to an argparse parser."""
    synth = subparsers.add_parser(
        "synth",
        help="write synthetic head CT phantoms with exact truth",
        description="Synthetic head CT studies (haemorrhage phantoms) and cohorts with known "
        "outcome models. See docs/synthetic-data.md.",
    )
    sub = synth.add_subparsers(dest="synth_command", required=True)

    s = sub.add_parser("study", help="one study: DICOM series, labels.nii.gz, truth.json")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--seed", type=int, default=0, help="seed (same seed, same bytes)")
    s.add_argument(
        "--hemorrhage-ml", type=float, default=30.0, help="design haematoma volume in mL (default 30)"
    )
    s.add_argument("--no-hemorrhage", action="store_true", help="a normal scan")
    s.add_argument(
        "--site", default="lobar", choices=[*SITES, *SITE_ALIASES], help="haematoma site (default lobar)"
    )
    s.add_argument("--ivh", action="store_true", help="add intraventricular extension")
    s.add_argument("--thickness", type=float, default=5.0, help="slice thickness in mm")
    s.add_argument("--slices", type=int, default=None, help="number of slices (default: 160 mm coverage)")
    s.add_argument("--matrix", type=int, default=512, help="rows = columns (FOV 250 mm)")
    s.add_argument("--tilt-deg", type=float, default=0.0, help="gantry tilt in degrees")
    s.add_argument(
        "--compress", choices=sorted(COMPRESSIONS), default="none", help="lossless transfer syntax"
    )
    s.add_argument("--noise-hu", type=float, default=5.0, help="quantum noise SD in HU")
    s.add_argument("--no-artefacts", action="store_true", help="no skull-base streaks or beam hardening")
    s.set_defaults(func=run_study)

    c = sub.add_parser("cohort", help="N patients with clinical data, outcomes and manifest")
    c.add_argument("--out", type=Path, required=True, help="output folder")
    c.add_argument("--n", type=int, default=400, help="number of ICH patients (default 400)")
    c.add_argument("--negatives", type=int, default=0, help="extra scans without haemorrhage")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--follow-up", action="store_true", help="also render the follow-up scan")
    c.add_argument("--matrix", type=int, default=128, help="rows = columns (default 128)")
    c.add_argument("--thickness", type=float, default=5.0, help="slice thickness in mm")
    c.set_defaults(func=run_cohort)


def run_study(args: argparse.Namespace) -> int:
    from .study import make_study

    truth = make_study(
        args.out,
        seed=args.seed,
        hemorrhage_ml=None if args.no_hemorrhage else args.hemorrhage_ml,
        site=args.site,
        thickness_mm=args.thickness,
        matrix=args.matrix,
        tilt_deg=args.tilt_deg,
        compress=args.compress,
        ivh=args.ivh,
        n_slices=args.slices,
        noise_sd_hu=args.noise_hu,
        artefacts=not args.no_artefacts,
    )
    print(f"wrote {truth.n_slices} images to {truth.dicom_dir}")
    print(f"  labels {truth.label_path} (1 ICH, 2 IVH, 3 oedema), truth {truth.truth_path}")
    print(
        f"  ICH {truth.ich_volume_ml:.2f} mL ({truth.site}), IVH {truth.ivh_volume_ml:.2f} mL, "
        f"cortical involvement {'yes' if truth.cortical_involvement else 'no'}"
    )
    return 0


def run_cohort(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from .cohort_io import make_cohort

    total = args.n + args.negatives
    with Progress() as bar:
        task = bar.add_task("rendering cohort", total=total)
        manifest = make_cohort(
            args.out,
            args.n,
            seed=args.seed,
            follow_up=args.follow_up,
            matrix=args.matrix,
            thickness_mm=args.thickness,
            n_negative=args.negatives,
            progress=lambda done: bar.update(task, completed=done),
        )
    print(f"wrote {total} patients; manifest {manifest}")
    return 0
