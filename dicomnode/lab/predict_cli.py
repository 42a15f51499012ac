"""`dicomnode train he|pse`: cross-validate a preset on a cohort, fit it, write the model folder.

The lead's ``dicomnode train`` parser calls :func:`register` with its sub-parsers object.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

__all__ = ["register", "run_train"]

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``he`` and ``pse`` to the ``dicomnode train`` sub-parsers (each sets ``func``)."""
    from dicomnode.lab.predictor_presets import PRESETS

    for target, what in (("he", "haematoma expansion"), ("pse", "post-stroke epilepsy")):
        p = subparsers.add_parser(
            target, help=f"train and validate a {what} model (preset recipes, CV report)",
            description=f"Cross-validate a {what} preset on a cohort (repeated stratified K-fold), "
            "fit it on all cases and write the model folder: bundle (model.json + skops), "
            "report.html, MODEL_CARD.md, validation.json. See docs/prediction.md, Recipes.")
        p.add_argument("--cohort", required=True, type=Path, metavar="DIR_OR_CSV",
                       help="synthetic cohort folder (manifest.csv) or outcome table CSV "
                       "(study_dir, outcome and clinical columns)")
        p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="recipe")
        p.add_argument("--out", type=Path, metavar="DIR",
                       help="model folder (default models/<target>-<preset>)")
        p.add_argument("--folds", type=int, default=5)
        p.add_argument("--repeats", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threshold", type=float, default=0.5, help="decision threshold for the "
                       "confusion matrix, sensitivity, specificity, precision, F1")
        p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates")
        p.add_argument("--cache", type=Path, metavar="DIR", help="feature cache (default <cohort>/.features)")
        p.add_argument("--limit", type=int, metavar="N", help="use the first N cases only")
        p.add_argument("--radiomics-params", type=Path, metavar="YAML",
                       help="pyradiomics params (default models/radiomics-params.yaml)")
        p.add_argument("--no-compare", action="store_true", help="skip the preset's comparators")
        p.add_argument("--tiny", action="store_true", help="tiny deep settings (smoke tests only)")
        p.add_argument("--config", metavar="F", help="configuration file (segmentation backend for "
                       "cohorts without label maps)")
        p.set_defaults(func=run_train, target=target)


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dicomnode.lab.cohort_table import load_cohort
    from dicomnode.lab.predictor_presets import get_preset
    from dicomnode.lab.train_predictor import train_preset
    from dicomnode.predict.radiomics_features import DEFAULT_RADIOMICS_PARAMS

    preset = get_preset(args.preset)
    if args.target not in preset.targets:
        raise ValueError(f"preset {args.preset} does not support target {args.target}")
    out = args.out or Path("models") / f"{args.target}-{args.preset}"
    backend = None
    if args.config:
        from dicomnode.config import load_settings
        from dicomnode.segment.registry import build_backend

        backend = build_backend(load_settings(args.config).segmentation)
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("features", total=None)
        table = load_cohort(args.cohort, images=preset.uses_images, cache_dir=args.cache, backend=backend,
                            radiomics_params=args.radiomics_params or DEFAULT_RADIOMICS_PARAMS,
                            limit=args.limit,
                            progress=lambda i, n: bar.update(task, completed=i, total=n))
        cv_task = bar.add_task("cross-validation", total=None)
        result = train_preset(
            table, args.target, args.preset, out=out, folds=args.folds, repeats=args.repeats,
            seed=args.seed, threshold=args.threshold, n_boot=args.bootstrap, tiny=args.tiny,
            compare=not args.no_compare,
            progress=lambda text, i, n: bar.update(cv_task, description=text, completed=i, total=n))
    m = result["cv"]["metrics"]
    console.print(f"{args.target.upper()} {args.preset}: AUC {m['auc']['value']:.3f} "
                  f"({m['auc']['ci_low']:.3f}-{m['auc']['ci_high']:.3f}), sensitivity "
                  f"{m['sensitivity']['value']:.3f}, specificity {m['specificity']['value']:.3f}, "
                  f"F1 {m['f1']['value']:.3f}, AP {m['average_precision']['value']:.3f}, "
                  f"Brier {m['brier']['value']:.3f}")
    if "oracle_auc" in result:
        console.print(f"oracle AUC (true risks, same patients) {result['oracle_auc']:.3f}; gap "
                      f"{result['oracle_auc'] - m['auc']['value']:.3f}")
    for name, c in result["comparators"].items():
        console.print(f"  comparator {name}: AUC {c['metrics']['auc']['value']:.3f}")
    console.print(f"model folder: {out} (report.html, MODEL_CARD.md, model.json)")
    return 0
