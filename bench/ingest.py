"""Ingest benchmark: the same CT series, the same sender, three kinds of receiver.

One run generates an N-slice 512x512 CT series (default 300) from one real slice into a temporary
folder, then sends it over loopback with DCMTK ``storescu`` (TCP_NODELAY=1) to:

* ``node``            ``dicomnode serve`` as its own process: fsync file + rename + fsync folder +
                      SQLite commit (WAL, synchronous=FULL) before each acknowledgement;
* ``node (no fsync)`` the same with ``storage.fsync = false`` and ``sqlite_synchronous = "NORMAL"``;
* ``storescp``        DCMTK ``storescp -od DIR`` (``--fork`` for several associations; no fsync);
* ``bare``            a bare pynetdicom receiver that writes ``event.encoded_dataset()`` to a
                      file and nothing else (the library's floor), without and with fsync.

Each receiver is started fresh on an empty folder for every measurement and every instance is
checked afterwards (files on disk; for the node also rows in its database): a run that loses
images fails. Several associations means K ``storescu`` processes in parallel, each sending its
own contiguous share of the one series (the total is N images, not K x N).

    .venv/bin/python bench/ingest.py                 # 300 slices, 3 repeats, 1 and 4 associations
    .venv/bin/python bench/ingest.py --quick         # 30 slices, 1 repeat (smoke run)
    .venv/bin/python bench/ingest.py --profile       # where the node's time goes (in-process)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402 - bench/ is not a package
    LOOPBACK,
    VENV_BIN,
    BenchError,
    count_files,
    free_port,
    machine_info,
    make_ct_series,
    median,
    spawn,
    split_into,
    stop,
    tail,
    wait_for_port,
)

# ../shared sits next to the repository (as in CI).
TEMPLATE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ge-head-ct-tilt" / "01.dcm"
CALLED_AET = "DICOMNODE"
CALLING_AET = "BENCHSCU"
NODELAY = {"TCP_NODELAY": "1"}


# -- the bare pynetdicom receiver (run as its own process: ingest.py --bare-receiver ...) -------
def bare_receiver(folder: Path, port: int, fsync: bool) -> int:
    """Accept every storage class; write the encoded dataset; optionally fsync; ack."""
    from pydicom import uid
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    counter = iter(range(1 << 62))
    lock = threading.Lock()

    def handle_store(event):
        with lock:
            k = next(counter)
        with open(folder / f"{k:07d}.dcm", "wb") as fh:
            fh.write(event.encoded_dataset())
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        return 0x0000

    ae = AE(ae_title=CALLED_AET)
    ae.maximum_pdu_size = 0  # as the node's default configuration
    ae.maximum_associations = 10
    syntaxes = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian]
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:  # always set in pynetdicom's list; typed Optional
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"bare receiver listening on {LOOPBACK}:{port} fsync={fsync}", flush=True)
    ae.start_server((LOOPBACK, port), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    return 0


# -- receivers ----------------------------------------------------------------------------------
@dataclass
class Receiver:
    name: str
    start: Callable[[Path, int, int], subprocess.Popen]   # (folder, port, associations)
    verify: Callable[[Path, int], None]                    # (folder, expected)
    note: str = ""


def _verify_files(pattern: str) -> Callable[[Path, int], None]:
    def verify(folder: Path, expected: int) -> None:
        got = count_files(folder, pattern)
        if got != expected:
            raise BenchError(f"{got} files received in {folder}, {expected} sent")
    return verify


def node_config(folder: Path, fsync: bool, processes: int = 1) -> Path:
    cfg = folder.parent / f"{folder.name}.toml"
    cfg.write_text(
        f"[node]\nbind_address = \"127.0.0.1\"\nreceiver_processes = {processes}\n"
        f"[storage]\nfsync = {'true' if fsync else 'false'}\n"
        f"[database]\nsqlite_synchronous = \"{'FULL' if fsync else 'NORMAL'}\"\n",
        encoding="utf-8")
    return cfg


def _start_node(fsync: bool, processes: int = 1) -> Callable[[Path, int, int], subprocess.Popen]:
    def start(folder: Path, port: int, _assocs: int) -> subprocess.Popen:
        folder.mkdir(parents=True)
        config = node_config(folder, fsync, processes)
        cmd = [str(VENV_BIN / "dicomnode"), "serve", "--config", str(config),
               "--storage", str(folder), "--port", str(port), "--settle-s", "2"]
        proc = spawn(cmd, log_path=folder.parent / f"{folder.name}.log", cwd=folder.parent)
        if processes > 1:
            time.sleep(2.0)  # the extra receiving processes bind after the first one listens
        return proc
    return start


def verify_node(folder: Path, expected: int) -> None:
    files = sum(1 for p in folder.rglob("*.dcm")
                if p.is_file() and p.relative_to(folder).parts[0] not in (".tmp", "_other"))
    con = sqlite3.connect(f"file:{folder / 'dicomnode.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT count(*) FROM instances").fetchone()[0]
        errors = con.execute("SELECT count(*) FROM receive_errors").fetchone()[0]
    finally:
        con.close()
    if files != expected or rows != expected or errors:
        raise BenchError(f"node stored {files} files and {rows} instance rows "
                         f"({errors} receive errors); {expected} sent")


def _start_storescp(folder: Path, port: int, assocs: int) -> subprocess.Popen:
    folder.mkdir(parents=True)
    cmd = ["storescp", "-aet", CALLED_AET, "-od", str(folder)]
    if assocs > 1:
        cmd.append("--fork")
    cmd.append(str(port))
    return spawn(cmd, log_path=folder.parent / f"{folder.name}.log", env=NODELAY)


def _start_bare(fsync: bool) -> Callable[[Path, int, int], subprocess.Popen]:
    def start(folder: Path, port: int, _assocs: int) -> subprocess.Popen:
        folder.mkdir(parents=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-receiver", str(folder),
               str(port)] + (["--fsync"] if fsync else [])
        return spawn(cmd, log_path=folder.parent / f"{folder.name}.log")
    return start


RECEIVERS = {
    "storescp": Receiver("storescp", _start_storescp, _verify_files("*"),
                         "DCMTK, no fsync"),
    "bare": Receiver("bare pynetdicom", _start_bare(False), _verify_files("*.dcm"),
                     "write only, no fsync"),
    "bare-fsync": Receiver("bare pynetdicom", _start_bare(True), _verify_files("*.dcm"),
                           "write + fsync(file)"),
    "node": Receiver("node", _start_node(True), verify_node,
                     "fsync file+dir, SQLite FULL"),
    "node-nofsync": Receiver("node", _start_node(False), verify_node,
                             "fsync off, SQLite NORMAL"),
    "node-2proc": Receiver("node, 2 receiving processes", _start_node(True, 2), verify_node,
                           "fsync file+dir, SQLite FULL"),
}


# -- one measurement ----------------------------------------------------------------------------
@dataclass
class Measurement:
    receiver: str
    assocs: int
    seconds: list[float] = field(default_factory=list)


def send(folders: list[Path], port: int, logdir: Path) -> float:
    """Run one storescu per folder in parallel; return the wall time of the whole transfer."""
    procs: list[subprocess.Popen] = []
    logs = []
    t0 = time.perf_counter()
    try:
        for k, folder in enumerate(folders):
            log = logdir / f"storescu-{k + 1}.log"
            logs.append(log)
            procs.append(spawn(["storescu", "-R", "+sd", "+sp", "*.dcm", "-aet", CALLING_AET,
                                "-aec", CALLED_AET, LOOPBACK, str(port), f"{folder}/"],
                               log_path=log, env=NODELAY))
        codes = [p.wait(timeout=600) for p in procs]
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            raise BenchError(f"storescu exited with {code}:\n{tail(log)}")
    return elapsed


def measure_once(key: str, assocs: int, parts: list[Path], n: int, work: Path) -> float:
    rec = RECEIVERS[key]
    run_dir = Path(tempfile.mkdtemp(prefix=f"{key}-{assocs}-", dir=work))
    folder = run_dir / "recv"
    port = free_port()
    proc = None
    try:
        proc = rec.start(folder, port, assocs)
        wait_for_port(port, proc=proc, what=f"{key} receiver",
                      timeout_s=60 if key.startswith("node") else 30)
        seconds = send(parts, port, run_dir)
        if proc.poll() is not None:
            raise BenchError(f"{key} receiver died during the run:\n"
                             f"{tail(run_dir / 'recv.log')}")
        try:
            rec.verify(folder, n)
        except BenchError as exc:
            raise BenchError(f"{key}, {assocs} association(s): {exc}\n"
                             f"{tail(run_dir / 'recv.log')}") from exc
        return seconds
    finally:
        stop(proc)
        shutil.rmtree(run_dir, ignore_errors=True)


# -- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="slices in the series (default 300)")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per cell; median shown")
    ap.add_argument("--associations", default="1,4",
                    help="comma-separated association counts (default 1,4)")
    ap.add_argument("--receivers", default=",".join(RECEIVERS),
                    help=f"comma-separated subset of {','.join(RECEIVERS)}")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 slices, 1 repeat")
    ap.add_argument("--profile", action="store_true",
                    help="profile the node in-process (stage timers, then cProfile)")
    ap.add_argument("--bare-receiver", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--fsync", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.bare_receiver:
        return bare_receiver(Path(args.bare_receiver[0]), int(args.bare_receiver[1]), args.fsync)
    if args.quick:
        args.n, args.repeats = 30, 1
    assoc_counts = [int(a) for a in args.associations.split(",") if a.strip()]
    keys = [k.strip() for k in args.receivers.split(",") if k.strip()]
    unknown = [k for k in keys if k not in RECEIVERS]
    if unknown:
        ap.error(f"unknown receivers {unknown}")
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} (DCMTK) not on PATH")
    if not TEMPLATE.is_file():
        raise BenchError(f"template slice {TEMPLATE} missing")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    info = machine_info()
    console.print(f"[bold]dicomnode ingest benchmark[/] {date.today().isoformat()}")
    console.print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, "
                  f"kernel {info['kernel']}")
    console.print(f"software: Python {info['python']}, pydicom {info['pydicom']}, "
                  f"pynetdicom {info['pynetdicom']}, {info['dcmtk']}")

    work = Path(tempfile.mkdtemp(prefix="dicomnode-bench-ingest-"))
    try:
        t = time.perf_counter()
        files = make_ct_series(TEMPLATE, work / "series" / "all", args.n)
        size = sum(f.stat().st_size for f in files)
        console.print(f"series: {args.n} slices x {size / args.n / 1024:.0f} KiB "
                      f"({size / 2**20:.0f} MiB) generated in {time.perf_counter() - t:.1f} s "
                      f"under {work}; sender: storescu -R +sd (TCP_NODELAY=1); "
                      f"K associations = K storescu processes sharing the {args.n} images; "
                      f"{args.repeats} repeat(s), median shown")
        if args.profile:
            from ingest_profile import profile_node

            for assocs in assoc_counts:
                profile_node(args.n, work, files, cprofile=False, assocs=assocs)
            profile_node(args.n, work, files, cprofile=True)
            return 0

        parts = {k: ([files[0].parent] if k == 1 else
                     split_into(files, work / "series" / f"split{k}", k)) for k in assoc_counts}
        results: dict[tuple[str, int], Measurement] = {}
        for rep in range(args.repeats):
            for assocs in assoc_counts:
                for key in keys:
                    m = results.setdefault((key, assocs), Measurement(key, assocs))
                    s = measure_once(key, assocs, parts[assocs], args.n, work)
                    m.seconds.append(s)
                    console.print(f"  repeat {rep + 1}: {key:<13} x{assocs}: {s:6.2f} s "
                                  f"{args.n / s:7.1f} img/s", highlight=False)

        def rate(key: str, assocs: int) -> float | None:
            m = results.get((key, assocs))
            return args.n / median(m.seconds) if m else None

        table = Table(title=f"ingest, {args.n} x 512x512 CT over loopback "
                            f"(median of {args.repeats})")
        for col in ("receiver", "durability", "assocs", "images/s", "MB/s", "min-max img/s",
                    "node / this"):
            table.add_column(col, justify="left" if col in ("receiver", "durability")
                             else "right")
        for assocs in assoc_counts:
            node = rate("node", assocs)
            for key in keys:
                m = results[(key, assocs)]
                r = args.n / median(m.seconds)
                rates = [args.n / s for s in m.seconds]
                ratio = f"{node / r:.2f}x" if node and key != "node" else ""
                table.add_row(RECEIVERS[key].name, RECEIVERS[key].note, str(assocs),
                              f"{r:.1f}", f"{r * size / args.n / 1e6:.1f}",
                              f"{min(rates):.0f}-{max(rates):.0f}", ratio)
        console.print(table)
        for assocs in assoc_counts:
            node, bare_f, scp = (rate("node", assocs), rate("bare-fsync", assocs),
                                 rate("storescp", assocs))
            if node is None:
                continue
            parts_txt = [f"{assocs} assoc: node {node:.1f} img/s"]
            if bare_f:
                parts_txt.append(f"node / bare(fsync) = {node / bare_f:.2f} (target >= 0.70)")
            if scp:
                parts_txt.append(f"node / storescp = {node / scp:.2f}")
            if assocs == 1:
                parts_txt.append(f"target >= 60 img/s: {'met' if node >= 60 else 'NOT met'}")
            console.print("; ".join(parts_txt))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ingest benchmark FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
