"""`dicomnode cohort export` and `dicomnode validate he|pse`: the learning loop's lab commands.

The lead's parser calls :func:`register` with its sub-parsers object (only when one of these
commands, or the overall help, is asked for: serving never loads the lab).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicomnode.config import Settings
    from dicomnode.db.session import SessionFactory

__all__ = ["register", "run_export", "run_validate"]


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="F", help="configuration file (database, storage, "
                   "served models; default: lookup order)")


def register(subparsers) -> None:
    """Add ``cohort export`` and ``validate he|pse`` (each sets ``func``)."""
    p = subparsers.add_parser("cohort", help="the department's cohort: export")
    cohort_sub = p.add_subparsers(dest="action", required=True)
    e = cohort_sub.add_parser(
        "export", help="write the recorded outcomes and features as a cohort for "
        "`dicomnode train he|pse` (pseudonymised)",
        description="Write the analysed baselines with an outcome (expansion measured on "
        "follow-ups, imported clinical outcomes) and the features they were scored on: "
        "cohort.json, cases.csv, features.csv (docs/prediction.md, learning loop). No "
        "patient names; patient and study identifiers are keyed hashes unless "
        "--keep-identifiers.")
    _config_option(e)
    e.add_argument("--out", required=True, type=Path, metavar="DIR")
    e.add_argument("--keep-identifiers", action="store_true",
                   help="keep Patient ID, accession number and UIDs (not pseudonymised)")
    e.add_argument("--key-file", type=Path, metavar="F",
                   help="the pseudonym secret (default <storage>/.pseudonym-key, made on first use)")
    e.set_defaults(func=run_export)

    v = subparsers.add_parser("validate", help="score a model on the department's own outcomes")
    v_sub = v.add_subparsers(dest="target", required=True)
    for target, what in (("he", "haematoma expansion"), ("pse", "post-stroke epilepsy")):
        t = v_sub.add_parser(
            target, help=f"validate the {what} model",
            description=f"Score the {what} model (the served one unless --model) on the "
            "department's recorded outcomes without refitting: AUC with bootstrap CI, "
            "calibration plot and slope, Brier score, numbers of patients and events; "
            "report.html in the training report's format (docs/prediction.md, learning loop).")
        _config_option(t)
        t.add_argument("--model", type=Path, metavar="DIR",
                       help="model folder (default: [prediction] the served model)")
        t.add_argument("--cohort", type=Path, metavar="DIR",
                       help="a cohort from `dicomnode cohort export` (default: the node's database)")
        t.add_argument("--out", type=Path, metavar="DIR",
                       help="report folder (default validation/<target>-<model name>)")
        t.add_argument("--threshold", type=float, default=0.5)
        t.add_argument("--bootstrap", type=int, default=1000, metavar="N")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--min-events", type=int, default=None, metavar="N",
                       help="warn below N events or N non-events (default 100)")
        t.set_defaults(func=run_validate)


def _settings(args: argparse.Namespace) -> Settings:
    from dicomnode.config import load_settings

    return load_settings(args.config)


def _sessions(settings: Settings) -> SessionFactory:
    """Read-only sessions on the node's database, which must be at this dicomnode's schema."""
    from dicomnode.db.migrate import upgrade_command
    from dicomnode.db.session import open_for_reading
    from dicomnode.errors import SchemaError

    sessions, schema = open_for_reading(settings)
    problem = schema.problem(upgrade_command(settings))
    if problem:
        raise SchemaError(problem)
    return sessions


def run_export(args: argparse.Namespace) -> int:
    from dicomnode.lab.department import export_cohort
    from dicomnode.storage import PSEUDONYM_KEY

    settings = _settings(args)
    sessions = _sessions(settings)
    key_file = args.key_file or settings.storage.path / PSEUDONYM_KEY
    rows = export_cohort(sessions, args.out, key_file=key_file,
                         keep_identifiers=args.keep_identifiers)
    counts = rows.meta["outcomes"]
    print(f"cohort written to {args.out}: {len(rows.cases)} baseline studies; "
          + "; ".join(f"{t}: {c['n']} known, {c['events']} events" for t, c in counts.items())
          + ("" if args.keep_identifiers else f" (pseudonymised with {key_file})"))
    left = {k: n for k, n in rows.meta["left_out"].items() if n}
    if left:
        print("left out: " + ", ".join(f"{n} {k}" for k, n in left.items()))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from dicomnode.lab.cohort_table import load_cohort
    from dicomnode.lab.validate_model import MIN_EVENTS, validate_model, write_validation
    from dicomnode.predict.bundle import load_predictor
    from dicomnode.predict.estimators import TRUSTED_TYPES

    settings = _settings(args)
    folder = args.model or getattr(settings.prediction, f"{args.target}_model")
    if folder is None:
        raise ValueError(f"no {args.target} model: give --model or set [prediction] "
                         f"{args.target}_model")
    predictor = load_predictor(Path(folder), extra_trusted=TRUSTED_TYPES)
    with tempfile.TemporaryDirectory(prefix="dicomnode-validate-") as scratch:
        if args.cohort is not None:
            table = load_cohort(args.cohort, images=True)
        else:
            from dicomnode.lab.department import department_table

            table = department_table(_sessions(settings), Path(scratch) / "cohort")
        result = validate_model(predictor, table, args.target, threshold=args.threshold,
                                n_boot=args.bootstrap, seed=args.seed,
                                min_events=MIN_EVENTS if args.min_events is None else args.min_events)
    out = args.out or Path("validation") / f"{args.target}-{predictor.name}"
    report = write_validation(result, out)
    m = result["cv"]["metrics"]
    cal = result["cv"]["calibration"]
    print(f"{args.target.upper()} {predictor.name} {predictor.version}: {result['n_patients']} "
          f"patients, {result['n_cases']} cases, {result['n_positive']} events; AUC "
          f"{m['auc']['value']:.3f} ({m['auc']['ci_low']:.3f}-{m['auc']['ci_high']:.3f}), "
          f"calibration slope {cal['slope']:.3f}, intercept {cal['intercept']:.3f}, "
          f"Brier {m['brier']['value']:.3f}")
    for warning in result["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"report: {report}")
    return 0
