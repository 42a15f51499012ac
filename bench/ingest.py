"""Ingest benchmark: the same CT series and sender, the node against outside receivers.

One run generates an N-slice 512x512 CT series (default 140) from one real slice into a temporary
folder, then sends it over loopback with DCMTK ``storescu`` (TCP_NODELAY=1) to each receiver of
``ingest_receivers.py`` (the node with its shipped defaults, Orthanc with its defaults, DCMTK
``storescp``, a bare pynetdicom receiver), interleaved: every repeat measures every receiver at
every association count, in a rotating order, so that the load of the machine falls on all of
them alike. Each receiver starts fresh on an empty folder for every measurement, and is timed only
once it is ready (the node: every receiving process listening and its worker ready). Several
associations means K ``storescu`` processes in parallel, each sending its own contiguous share of
the one series (the total is N images, not K x N).

Besides images/s it reports the acknowledgement latency of the last instance of each association:
from the moment ``storescu`` has sent it (its ``DIMSE receiveCommand`` log line) to the
``Received Store Response`` line, both with microsecond timestamps.

    .venv/bin/python bench/ingest.py                 # 140 slices, 3 repeats, 1,2,4,8 associations
    .venv/bin/python bench/ingest.py --quick         # 30 slices, 1 repeat (smoke run)
    .venv/bin/python bench/ingest.py --profile       # where the node's time goes (in-process)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402 - bench/ is not a package
    LOOPBACK,
    BenchError,
    free_port,
    machine_info,
    make_ct_series,
    median,
    spawn,
    split_into,
    stop,
    tail,
)
from ingest_receivers import (  # noqa: E402
    CALLED_AET,
    NODELAY,
    RECEIVERS,
    bare_receiver,
    node_config,
    start_receiver,
    verify_node,
)

# ../shared sits next to the repository (as in CI).
TEMPLATE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ge-head-ct-tilt" / "01.dcm"
CALLING_AET = "BENCHSCU"
DEFAULT_RECEIVERS = "storescp,orthanc,bare-fsync,node"
__all__ = ["node_config", "send", "verify_node"]  # used by ingest_profile.py

# storescu's log: microsecond timestamps, only the two lines that bound an acknowledgement.
_SENDER_LOG = """log4cplus.rootLogger = INFO, out
log4cplus.logger.dcmtk.dcmnet = TRACE
log4cplus.appender.out = log4cplus::ConsoleAppender
log4cplus.appender.out.layout = log4cplus::PatternLayout
log4cplus.appender.out.layout.ConversionPattern = @%D{%s.%Q} %m%n
log4cplus.appender.out.filters.1 = log4cplus::spi::StringMatchFilter
log4cplus.appender.out.filters.1.StringToMatch = DIMSE receiveCommand
log4cplus.appender.out.filters.1.AcceptOnMatch = true
log4cplus.appender.out.filters.2 = log4cplus::spi::StringMatchFilter
log4cplus.appender.out.filters.2.StringToMatch = Received Store Response
log4cplus.appender.out.filters.2.AcceptOnMatch = true
log4cplus.appender.out.filters.3 = log4cplus::spi::DenyAllFilter
"""


# -- one measurement ----------------------------------------------------------------------------
@dataclass
class Measurement:
    receiver: str
    assocs: int
    seconds: list[float] = field(default_factory=list)
    last_ack_ms: list[float] = field(default_factory=list)  # one per association and repeat
    cpu_s: list[float] = field(default_factory=list)  # receiver's processes, user + system


@dataclass
class Sent:
    seconds: float
    last_ack_ms: list[float]  # per association: last instance sent -> its response
    cpu_s: float = 0.0


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (and reaped children)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state, ppid, ..., utime (12th), stime, cutime, cstime.
        ticks = sum(int(v) for v in fields[11:15])
        stats[int(entry.name)] = (int(fields[1]), ticks * _TICK_S)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo.extend(child for child, (ppid, _) in stats.items() if ppid == p)
    return total


def _stamp(token: str) -> float:
    """``@1796532745.461.642`` (seconds.milliseconds.microseconds) as seconds."""
    sec, milli, micro = token.lstrip("@").split(".")
    return int(sec) + int(milli) / 1e3 + int(micro) / 1e6


def last_ack_ms(log: Path) -> float:
    """Milliseconds from the last request sent to its C-STORE response, from storescu's log."""
    sent_at = acked = None
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split(" ", 1)
        if len(parts) < 2 or not parts[0].startswith("@"):
            continue
        if parts[1].strip() == "DIMSE receiveCommand":
            sent_at, acked = _stamp(parts[0]), None
        elif parts[1].startswith("Received Store Response") and sent_at is not None:
            acked = _stamp(parts[0])
    if sent_at is None or acked is None:
        raise BenchError(f"no acknowledged request in {log}:\n{tail(log)}")
    return (acked - sent_at) * 1000.0


def send(folders: list[Path], port: int, logdir: Path) -> Sent:
    """Run one storescu per folder in parallel; the wall time of the whole transfer."""
    log_config = logdir / "storescu-log.cfg"
    log_config.write_text(_SENDER_LOG, encoding="utf-8")
    procs: list[subprocess.Popen] = []
    logs = []
    t0 = time.perf_counter()
    try:
        for k, folder in enumerate(folders):
            log = logdir / f"storescu-{k + 1}.log"
            logs.append(log)
            procs.append(spawn(["storescu", "-lc", str(log_config), "-R", "+sd", "+sp", "*.dcm",
                                "-aet", CALLING_AET, "-aec", CALLED_AET, LOOPBACK, str(port),
                                f"{folder}/"], log_path=log, env=NODELAY))
        codes = [p.wait(timeout=600) for p in procs]
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p)
    for code, log in zip(codes, logs, strict=True):
        if code != 0:
            raise BenchError(f"storescu exited with {code}:\n{tail(log)}")
    return Sent(elapsed, [last_ack_ms(log) for log in logs])


def measure_once(key: str, assocs: int, parts: list[Path], n: int, work: Path) -> Sent:
    rec = RECEIVERS[key]
    run_dir = Path(tempfile.mkdtemp(prefix=f"{key}-{assocs}-", dir=work))
    folder = run_dir / "recv"
    port = free_port()
    proc = None
    try:
        proc = start_receiver(key, folder, port, assocs)
        cpu0 = tree_cpu_s(proc.pid)
        sent = send(parts, port, run_dir)
        sent.cpu_s = tree_cpu_s(proc.pid) - cpu0
        if proc.poll() is not None:
            raise BenchError(f"{key} receiver died during the run:\n"
                             f"{tail(run_dir / 'recv.log')}")
        try:
            rec.verify(folder, n)
        except BenchError as exc:
            raise BenchError(f"{key}, {assocs} association(s): {exc}\n"
                             f"{tail(run_dir / 'recv.log')}") from exc
        return sent
    finally:
        stop(proc)
        shutil.rmtree(run_dir, ignore_errors=True)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


# -- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=140, help="slices in the series (default 140)")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per cell; median shown")
    ap.add_argument("--associations", default="1,2,4,8",
                    help="comma-separated association counts (default 1,2,4,8)")
    ap.add_argument("--receivers", default=DEFAULT_RECEIVERS,
                    help=f"comma-separated subset of {','.join(RECEIVERS)} "
                         f"(default {DEFAULT_RECEIVERS})")
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
    tools = ["storescu", "storescp"] + (["Orthanc"] if "orthanc" in keys else [])
    for tool in tools:
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not on PATH (DCMTK, Debian orthanc)")
    if not TEMPLATE.is_file():
        raise BenchError(f"template slice {TEMPLATE} missing")

    from rich.console import Console

    console = Console(width=max(Console().width, 120))
    info = machine_info()
    console.print(f"[bold]dicomnode ingest benchmark[/] {date.today().isoformat()}")
    console.print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, "
                  f"kernel {info['kernel']}")
    console.print(f"software: Python {info['python']}, pydicom {info['pydicom']}, "
                  f"pynetdicom {info['pynetdicom']}, {info['dcmtk']}")
    console.print(f"load average at start: {_load()}")

    work = Path(tempfile.mkdtemp(prefix="dicomnode-bench-ingest-"))
    try:
        t = time.perf_counter()
        files = make_ct_series(TEMPLATE, work / "series" / "all", args.n)
        size = sum(f.stat().st_size for f in files)
        console.print(f"series: {args.n} slices x {size / args.n / 1024:.0f} KiB "
                      f"({size / 2**20:.0f} MiB) generated in {time.perf_counter() - t:.1f} s "
                      f"under {work}; sender: storescu -R +sd (TCP_NODELAY=1); "
                      f"K associations = K storescu processes sharing the {args.n} images; "
                      f"{args.repeats} repeat(s), interleaved, median shown")
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
            order = keys[rep % len(keys):] + keys[:rep % len(keys)]
            for assocs in assoc_counts:
                for key in order:
                    m = results.setdefault((key, assocs), Measurement(key, assocs))
                    sent = measure_once(key, assocs, parts[assocs], args.n, work)
                    m.seconds.append(sent.seconds)
                    m.last_ack_ms.extend(sent.last_ack_ms)
                    m.cpu_s.append(sent.cpu_s)
                    console.print(f"  repeat {rep + 1}: {key:<13} x{assocs}: {sent.seconds:6.2f} s "
                                  f"{args.n / sent.seconds:7.1f} img/s, last ack "
                                  f"{median(sent.last_ack_ms):.1f} ms, receiver CPU "
                                  f"{sent.cpu_s / args.n * 1000:.2f} ms/img", highlight=False)
        console.print(f"load average at end: {_load()}")
        report(console, results, keys, assoc_counts, args.n, size, args.repeats)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(console: Any, results: dict[tuple[str, int], Measurement], keys: list[str],
           assoc_counts: list[int], n: int, size: int, repeats: int) -> None:
    """The table of medians, then the node's ratios to Orthanc and storescp."""
    from rich.table import Table

    def rate(key: str, assocs: int) -> float | None:
        m = results.get((key, assocs))
        return n / median(m.seconds) if m else None

    table = Table(title=f"ingest, {n} x 512x512 CT over loopback (median of {repeats})")
    for col in ("receiver", "durability", "assocs", "images/s", "MB/s", "min-max img/s",
                "last ack ms", "CPU ms/img", "node / this"):
        table.add_column(col, justify="left" if col in ("receiver", "durability") else "right")
    for assocs in assoc_counts:
        node = rate("node", assocs)
        for key in keys:
            m = results[(key, assocs)]
            r = n / median(m.seconds)
            rates = [n / s for s in m.seconds]
            ratio = f"{node / r:.2f}x" if node and key != "node" else ""
            table.add_row(RECEIVERS[key].name, RECEIVERS[key].note, str(assocs), f"{r:.1f}",
                          f"{r * size / n / 1e6:.1f}", f"{min(rates):.0f}-{max(rates):.0f}",
                          f"{median(m.last_ack_ms):.1f}", f"{median(m.cpu_s) / n * 1000:.2f}",
                          ratio)
    console.print(table)
    for assocs in assoc_counts:
        node, orthanc, scp = rate("node", assocs), rate("orthanc", assocs), rate("storescp", assocs)
        if node is None:
            continue
        line = [f"{assocs} assoc: node {node:.1f} img/s"]
        if orthanc:
            verdict = "met" if node >= orthanc else "NOT met"
            line.append(f"node / Orthanc = {node / orthanc:.2f} (target >= 1.0: {verdict})")
        if scp:
            line.append(f"node / storescp = {node / scp:.2f}")
        console.print("; ".join(line))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ingest benchmark FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
