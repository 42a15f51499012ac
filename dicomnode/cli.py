"""Command line: ``dicomnode serve | worker | status | resend | db | echo | send | run | outcomes |
cohort | train | validate | synth``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode import __version__
from dicomnode.config import Destination, Settings, load_settings, parse_peer
from dicomnode.errors import ConfigError, DeliveryError, SchemaError
from dicomnode.logs import setup_logging

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from typing import TypeAlias

    # What add_subparsers returns; argparse names its class privately (typeshed makes it generic).
    _Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _add_config_options(p: argparse.ArgumentParser, *, node: bool) -> None:
    p.add_argument("--config", metavar="F", help="configuration file (default: lookup order)")
    p.add_argument("--storage", metavar="DIR",
                   help="root of received files and of the default SQLite database")
    if node:
        p.add_argument("--port", type=int, metavar="N", help="TCP port to listen on (0: any)")
        p.add_argument("--ae-title", metavar="X", help="our AE title")
        p.add_argument("--settle-s", type=float, metavar="S",
                       help="quiet seconds after which a series is complete")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {"storage.path": args.storage,
                                    "node.port": getattr(args, "port", None),
                                    "node.ae_title": getattr(args, "ae_title", None),
                                    "assembly.settle_s": getattr(args, "settle_s", None),
                                    "web.port": getattr(args, "web_port", None)}
    forwards = []
    for i, peer in enumerate(getattr(args, "forward", None) or []):
        if peer.startswith(("http://", "https://")):  # a DICOMweb service: STOW-RS
            forwards.append(Destination(name=f"forward-{i + 1}", kind="dicomweb", url=peer.rstrip("/")))
            continue
        aet, host, port = parse_peer(peer)
        forwards.append(Destination(name=f"forward-{i + 1}", ae_title=aet, host=host, port=port))
    if forwards:
        overrides["destinations.add"] = forwards
    return load_settings(args.config, overrides=overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.runtime.service import Node

    settings = _settings(args)
    setup_logging(settings.logging.level)
    log.info("dicomnode %s starting (config: %s, storage: %s)", __version__,
             settings.source or "embedded defaults", settings.storage.path)
    return Node(settings, start_worker=settings.worker.enabled).run_forever()


def cmd_worker(args: argparse.Namespace) -> int:
    from dicomnode.runtime.procs import stop_on_signals
    from dicomnode.runtime.worker import run_worker

    settings = _settings(args)
    setup_logging(settings.logging.level)
    return run_worker(settings, stop_on_signals(), poll_s=settings.worker.poll_interval_s)


def cmd_resend(args: argparse.Namespace) -> int:
    from dicomnode.db.session import open_sessions
    from dicomnode.send.outbox import resend

    settings = _settings(args)
    n = resend(open_sessions(settings), args.job)
    print(f"job {args.job}: {n} outputs queued for sending again (same UIDs)")
    return 0


def cmd_web_user(args: argparse.Namespace) -> int:
    """Add or replace a console user (the password is read from the terminal or stdin)."""
    import getpass

    from dicomnode.web.auth import add_user

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("dicomnode: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("dicomnode: a password needs at least 8 characters", file=sys.stderr)
        return 1
    add_user(Path(args.users_file), args.name, password)
    print(f"user {args.name} written to {args.users_file} (Argon2id hash)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from dicomnode.db.migrate import upgrade_command
    from dicomnode.db.queries import cluster_nodes, counters, series_status
    from dicomnode.db.session import open_for_reading

    settings = _settings(args)
    sessions, schema = open_for_reading(settings)
    problem = schema.problem(upgrade_command(settings))
    if problem:
        print(f"dicomnode: warning: {problem}", file=sys.stderr)
    try:
        rows = series_status(sessions, limit=args.limit)
        c = counters(sessions)
        nodes = cluster_nodes(sessions) if not problem else []
    except SQLAlchemyError as exc:
        if not problem:
            raise
        print(f"dicomnode: cannot read this schema ({type(exc).__name__})", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dicomnode: {len(rows)} most recent series")
    for col in ("series", "description", "instances", "state", "job", "tilt", "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        tilt = f"{r['tilt_deg']:.1f}°" if r["tilt_deg"] is not None else ""
        table.add_row("…" + r["series_instance_uid"][-20:], r["description"], str(r["instances"]),
                      r["state"], str(r["job_id"] or ""), tilt, r["reason"])
    console = Console()
    console.print(f"this node: {settings.node_name}")
    if nodes:
        cluster = Table(title="nodes sharing this database")
        for col in ("name", "role", "host", "pid", "version", "started", "last seen"):
            cluster.add_column(col)
        for n in nodes:
            cluster.add_row(n["name"], n["role"], n["host"], str(n["pid"]), n["version"],
                            n["started_at"], n["seen_at"])
        console.print(cluster)
    console.print(table)
    if c["discarded"] or c["refused"]:
        console.print(f"acknowledged but not processed: {sum(c['discarded'].values())} instances "
                      f"of other classes; refused: {c['refused']}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from dicomnode.db import migrate
    from dicomnode.db.session import make_engine

    settings = _settings(args)
    setup_logging(settings.logging.level)
    engine = make_engine(settings.database_url,
                         sqlite_synchronous=settings.database.sqlite_synchronous)
    if args.action == "upgrade":
        print(migrate.describe_upgrade(*migrate.upgrade(engine)))
        return 0
    status = migrate.schema_status(engine)
    print(status.describe(migrate.upgrade_command(settings)))
    return 0 if status.state is migrate.SchemaState.CURRENT else 1


def cmd_outcomes_import(args: argparse.Namespace) -> int:
    """Record clinical outcomes from a CSV file: every row checked, then all or nothing."""
    from dicomnode.db.outcome_import import import_outcomes
    from dicomnode.db.session import open_sessions

    report = import_outcomes(open_sessions(_settings(args)), Path(args.file))
    if report.ignored_columns:
        print(f"ignored columns: {', '.join(report.ignored_columns)}")
    if report.errors:
        for error in report.errors:
            print(f"dicomnode: {error}", file=sys.stderr)
        print(f"dicomnode: {len(report.errors)} problems in {args.file}: nothing imported",
              file=sys.stderr)
        return 1
    print(f"{args.file}: {report.inserted} outcomes recorded, {report.updated} changed, "
          f"{report.unchanged} already recorded, {report.unknown} empty cells (unknown); "
          f"{report.unmatched} of no study the node has analysed yet")
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.send.scu import echo

    aet, host, port = parse_peer(args.peer)
    status = echo(aet, host, port, calling_aet=args.calling_aet)
    print(f"C-ECHO {args.peer}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from dicomnode.send.scu import iter_files, send_files

    aet, host, port = parse_peer(args.to)
    files = list(iter_files(args.paths))
    with Progress(transient=True) as progress:
        task = progress.add_task(f"C-STORE to {args.to}", total=len(files))
        report = send_files(files, aet, host, port, calling_aet=args.calling_aet,
                            progress=lambda _p, _s: progress.advance(task))
    print(f"sent {report.sent}, failed {report.failed}, skipped {len(report.skipped)} "
          f"non-DICOM files; statuses {report.statuses}")
    return 0 if report.failed == 0 and report.sent > 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dicomnode.pipeline import process_folder

    settings = load_settings(args.config)
    setup_logging(settings.logging.level)
    if args.backend:
        from dataclasses import replace

        settings = replace(settings, segmentation=replace(settings.segmentation,
                                                          backend=args.backend))
    records = process_folder(Path(args.input_dir), Path(args.out), settings)
    table = Table(title=f"dicomnode run: {len(records)} series -> {args.out}")
    for col in ("series", "status", "ICH mL", "IVH mL", "ABC/2 mL", "site", "cortical",
                "backend", "reason"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row("…" + r["series_instance_uid"][-16:], r["status"],
                      f"{r['ich_volume_ml']:.1f}", f"{r['ivh_volume_ml']:.1f}",
                      f"{r['abc2_volume_ml']:.1f}", r["site"],
                      "yes" if r["cortical_involvement"] else "no", r["backend"], r["reason"])
    Console().print(table)
    return 0 if records else 1


def _floats(text: str, n: int, option: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != n:
        raise ValueError(f"{option} needs {n} comma-separated numbers, got {text!r}")
    return values


def cmd_train_segmentation(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from dicomnode.lab.train_segmentation import TrainConfig, is_synthetic_case, synth_cases, train

    setup_logging("INFO")
    folders = [p for d in args.data for p in sorted(Path(d).iterdir())
               if (p / "labels.nii.gz").is_file()]
    # Data folders made by `dicomnode synth` keep the bundle marked as fit on synthetic data.
    synthetic = all(is_synthetic_case(p) for p in folders)
    kind = "synthetic phantoms (dicomnode.lab.synth)" if synthetic else "labelled cases"
    description = f"{len(folders)} {kind} from {', '.join(args.data)}" if folders else ""
    thicknesses = tuple(float(v) for v in args.synth_thickness.split(","))
    sx, sy, sz = _floats(args.spacing, 3, "--spacing")
    lo, hi = _floats(args.hu_window, 2, "--hu-window")
    with Progress() as progress:
        if args.synth:
            task = progress.add_task("synthetic phantoms", total=args.synth)
            made = synth_cases(Path(args.synth_dir), args.synth, matrix=args.synth_matrix,
                               seed=args.synth_seed, thicknesses_mm=thicknesses,
                               progress=lambda i: progress.update(task, completed=i))
            folders += made
            description = "; ".join(filter(None, [
                description, f"{len(made)} synthetic phantoms (dicomnode.lab.synth, matrix "
                f"{args.synth_matrix}, seeds from {args.synth_seed}, slice thickness drawn "
                f"from {', '.join(f'{t:g}' for t in thicknesses)} mm)"]))
        if not folders:
            raise ValueError("no training cases: give --data folders with labels.nii.gz "
                             "or --synth N")
        cfg = TrainConfig(epochs=args.epochs, iterations_per_epoch=args.iterations,
                          batch_size=args.batch_size, device=args.device,
                          learning_rate=args.lr, validate_every=args.validate_every,
                          threads=args.threads, init_weights=args.init,
                          filters=tuple(int(f) for f in args.filters.split(",")),
                          spacing_mm=(sx, sy, sz), hu_window=(lo, hi))
        task = progress.add_task("training", total=cfg.epochs)
        path = train(folders, Path(args.out), cfg, data_description=description,
                     synthetic=synthetic,
                     progress=lambda e, _n, m: progress.update(
                         task, completed=e, description=f"training {m}"))
    print(f"model bundle written: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dicomnode.lab.demo import run_demo

    settings = load_settings(args.config)
    settings = replace(settings, logging=replace(settings.logging, level="WARNING"))
    setup_logging(settings.logging.level)
    if args.backend:
        settings = replace(settings, segmentation=replace(settings.segmentation,
                                                          backend=args.backend))
    return run_demo(settings, Path(args.out), matrix=args.matrix)


#: Commands whose parsers come from dicomnode.lab (training, synthetic data, the department's
#: cohort and validation): imported only when one of them (or the overall help) is asked for,
#: so serving never loads the lab.
LAB_COMMANDS = ("train", "synth", "cohort", "validate")


def build_parser(*, with_lab: bool = True) -> argparse.ArgumentParser:
    """The command-line parser; ``with_lab=False`` leaves the lab's modules unimported.

    Without the lab, its commands are listed (for ``--help``) but take no arguments.
    """
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_node_commands(sub)
    _add_admin_commands(sub)
    _add_peer_commands(sub)
    _add_offline_commands(sub)
    train_sub = _add_train_command(sub)
    _add_lab_commands(sub, train_sub, with_lab=with_lab)
    return parser


def _add_node_commands(sub: _Subparsers) -> None:
    """serve, worker, resend, status: the running node and its queue."""
    p = sub.add_parser("serve", help="run the DICOM node (C-STORE/C-ECHO SCP)")
    _add_config_options(p, node=True)
    p.add_argument("--web-port", type=int, metavar="N",
                   help="port of the web console (0: no console)")
    p.add_argument("--forward", action="append", metavar="AET@HOST:PORT|URL",
                   help="also send results to this peer (repeatable): a DICOM peer (C-STORE) or a "
                        "DICOMweb service root, http(s)://HOST[:PORT]/dicom-web (STOW-RS)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run the processing worker alone")
    _add_config_options(p, node=False)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("resend", help="send a job's results again (same UIDs)")
    _add_config_options(p, node=False)
    p.add_argument("job", type=int, metavar="JOB")
    p.set_defaults(func=cmd_resend)

    p = sub.add_parser("status", help="recent series with state and reasons")
    _add_config_options(p, node=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_status)


def _add_admin_commands(sub: _Subparsers) -> None:
    """db, web-user, outcomes: the database schema, console users and clinical outcomes."""
    p = sub.add_parser("db", help="the database schema: upgrade | current")
    db_sub = p.add_subparsers(dest="action", required=True)
    for action, text in (("upgrade", "bring the database to this dicomnode's schema revision "
                                     "(back it up first)"),
                         ("current", "show the database's revision and whether it is the newest "
                                     "(exit code 1 when not)")):
        d = db_sub.add_parser(action, help=text)
        _add_config_options(d, node=False)
        d.set_defaults(func=cmd_db)

    p = sub.add_parser("web-user", help="add or replace a web console user")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--users-file", required=True, metavar="F", help="[web] users_file")
    p.set_defaults(func=cmd_web_user)

    p = sub.add_parser("outcomes", help="clinical outcomes for the learning loop: import")
    o_sub = p.add_subparsers(dest="action", required=True)
    o = o_sub.add_parser("import", help="record outcomes (e.g. pse: a seizure within one year) "
                         "from a CSV keyed by accession_number or study_instance_uid",
                         description="Every row is checked first; nothing is recorded unless "
                         "all are valid. Importing the same file again changes nothing "
                         "(docs/prediction.md, learning loop).")
    _add_config_options(o, node=False)
    o.add_argument("file", metavar="FILE.csv")
    o.set_defaults(func=cmd_outcomes_import)


def _add_peer_commands(sub: _Subparsers) -> None:
    """echo, send: talk to another DICOM node."""
    p = sub.add_parser("echo", help="C-ECHO a peer: dicomnode echo AET@HOST:PORT")
    p.add_argument("peer", metavar="AET@HOST:PORT")
    p.add_argument("--calling-aet", default="DICOMNODE")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("send", help="C-STORE files or folders to a peer")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--to", required=True, metavar="AET@HOST:PORT")
    p.add_argument("--calling-aet", default="DICOMNODE")
    p.set_defaults(func=cmd_send)


def _add_offline_commands(sub: _Subparsers) -> None:
    """run, demo: analysis without a running node."""
    p = sub.add_parser("run", help="analyse DICOM files offline: dicomnode run IN --out OUT")
    p.add_argument("input_dir", metavar="INPUT_DIR")
    p.add_argument("--out", required=True, metavar="OUT_DIR")
    p.add_argument("--config", metavar="F")
    p.add_argument("--backend", choices=("unet", "blast_ct", "nnunet", "threshold"),
                   help="override [segmentation] backend")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the whole loop on loopback: node, PACS, synthetic study")
    p.add_argument("--config", metavar="F")
    p.add_argument("--out", default="demo-output", metavar="DIR", help="where PNGs go")
    p.add_argument("--matrix", type=int, default=256, help="synthetic study matrix size")
    p.add_argument("--backend", choices=("unet", "blast_ct", "nnunet", "threshold"))
    p.set_defaults(func=cmd_demo)


def _add_train_command(sub: _Subparsers) -> _Subparsers:
    """train (with its segmentation subcommand); returns train's subparsers for the lab's."""
    p = sub.add_parser("train", help="train models")
    train_sub = p.add_subparsers(dest="what", required=True)
    _add_train_segmentation(train_sub)
    return train_sub


def _add_train_segmentation(train_sub: _Subparsers) -> None:
    t = train_sub.add_parser("segmentation", help="train the unet segmentation bundle")
    t.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="folder of cases (each with labels.nii.gz and image.nii.gz or dicom/)")
    t.add_argument("--synth", type=int, default=0, metavar="N",
                   help="also make N synthetic phantoms to train on")
    t.add_argument("--synth-dir", default="var/train-synth", metavar="DIR")
    t.add_argument("--synth-matrix", type=int, default=160)
    t.add_argument("--synth-seed", type=int, default=1000, help="seed of the first phantom")
    t.add_argument("--synth-thickness", default="1.25,2.5,5,5", metavar="MM,...",
                   help="slice thicknesses to draw from (repeat one to weight it)")
    t.add_argument("--out", default="models/ich-unet-synth", metavar="DIR")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--iterations", type=int, default=40, help="iterations per epoch")
    t.add_argument("--batch-size", type=int, default=2)
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    t.add_argument("--validate-every", type=int, default=5, metavar="EPOCHS")
    t.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    t.add_argument("--init", metavar="MODEL_PT", help="start from these weights (fine-tuning)")
    t.add_argument("--filters", default="8,16,32,64")
    t.add_argument("--spacing", default="2,2,2.5", metavar="X,Y,Z",
                   help="model grid spacing in mm")
    t.add_argument("--hu-window", default="-20,120", metavar="LO,HI",
                   help="HU range scaled to 0..1 (write --hu-window=-20,200)")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.set_defaults(func=cmd_train_segmentation)


def _add_lab_commands(sub: _Subparsers, train_sub: _Subparsers, *, with_lab: bool) -> None:
    """The lab's commands (prediction training, synth, cohort, validate), or their names only."""
    if with_lab:
        from dicomnode.lab.loop_cli import register as register_loop
        from dicomnode.lab.predict_cli import register as register_predict
        from dicomnode.lab.synth.cli import register as register_synth

        register_predict(train_sub)
        register_synth(sub)
        register_loop(sub)
    else:
        sub.add_parser("synth", help="synthetic head CT with known haemorrhage")
        sub.add_parser("cohort", help="the department's cohort: export")
        sub.add_parser("validate", help="score a model on the department's own outcomes")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with_lab = not argv or argv[0] in LAB_COMMANDS or argv[0].startswith("-")
    args = build_parser(with_lab=with_lab).parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, SchemaError) as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 2
    except (DeliveryError, ValueError, FileNotFoundError) as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

