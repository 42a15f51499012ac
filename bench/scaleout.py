"""Scale-out overheads: jobs per minute with 1, 2 and 4 workers, claim latency, and ingest with
two receiving nodes against one, on SQLite and on PostgreSQL (a throwaway server, as in the tests).

Workers: each run queues the same synthetic head CTs (64 x 64, 5 mm; ``threshold`` backend on the
CPU), starts N ``dicomnode worker`` processes and times from the first claim to the last finished
job. Claim latency is ``claim_next`` + ``finish`` on a queue of empty jobs, in one process.

Ingest: S DCMTK ``storescu`` senders at once (TCP_NODELAY=1), each one study of its own, to
``dicomnode serve`` without its worker (reception only, fsync on): one node on SQLite, one node on
PostgreSQL, and two nodes (separate configurations, names and ports; one PostgreSQL database and
one shared storage folder) with half of the senders to each. Timed from the first sender's start
to the last sender's exit; every instance must be in the database. The layouts alternate, each
``--repeats`` times, and the load average is printed beside each run.

On a machine with fewer cores than processes the figures show the coordination overhead, not a
speed-up. Usage: ``python bench/scaleout.py [--part all|workers|ingest] [--series 8]
[--workers 1 2 4] [--senders 4] [--slices 60] [--matrix 256] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from dicomnode.assemble.series import sweep  # noqa: E402
from dicomnode.config import AssemblySettings, EligibilitySettings  # noqa: E402
from dicomnode.db.models import Instance, Job, NodeRun, Series, Study, utcnow  # noqa: E402
from dicomnode.db.session import SessionFactory, make_sessions  # noqa: E402
from dicomnode.jobs.queue import claim_next, finish  # noqa: E402
from dicomnode.lab.orthanc import free_port  # noqa: E402
from dicomnode.lab.synth import make_study  # noqa: E402
from dicomnode.receive.instance_store import InstanceStore  # noqa: E402
from tests.pg_server import PgServer, find_bin  # noqa: E402
from tests.reliability.harness import ServeProcess, restamp, storescu  # noqa: E402

#: Ingest layouts: (label, database, number of receiving nodes).
LAYOUTS = (("1 node, SQLite", "sqlite", 1), ("1 node, PostgreSQL", "postgresql", 1),
           ("2 nodes, PostgreSQL", "postgresql", 2))


def queue_series(store: InstanceStore, folders: list[Path]) -> None:
    import pydicom

    for folder in folders:
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            store.store(path.read_bytes(), ds, sop_class_uid=str(ds.SOPClassUID),
                        sop_instance_uid=str(ds.SOPInstanceUID),
                        transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
    store.close()
    sweep(store.sessions, AssemblySettings(settle_s=0), EligibilitySettings(),
          now=utcnow() + timedelta(seconds=1))


def run_workers(config: Path, storage: Path, sessions: SessionFactory, n_workers: int,
                n_jobs: int) -> float:
    """Seconds for ``n_workers`` worker processes to finish ``n_jobs`` queued jobs."""
    procs = [subprocess.Popen([sys.executable, "-m", "dicomnode.cli", "worker", "--config",
                               str(config), "--storage", str(storage)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n_workers)]
    try:
        start = None
        while True:
            with sessions() as s:
                claimed = s.scalar(select(func.count(Job.id)).where(Job.state != "queued")) or 0
                done = s.scalar(select(func.count(Job.id)).where(
                    Job.state.in_(("done", "failed")))) or 0
            if start is None and claimed:
                start = time.monotonic()
            if done >= n_jobs and start is not None:
                return time.monotonic() - start
            time.sleep(0.05)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def claim_latency_ms(sessions: SessionFactory, n: int = 200) -> tuple[float, float]:
    """Median and 95th percentile of claim + finish, in ms, on a queue of ``n`` empty jobs."""
    with sessions.begin() as s:
        study = Study(study_instance_uid=f"2.25.{time.time_ns()}")
        s.add(study)
        s.flush()
        for i in range(n):
            series = Series(series_instance_uid=f"{study.study_instance_uid}.{i}",
                            study_id=study.id, state="queued")
            s.add(series)
            s.flush()
            s.add(Job(series_id=series.id, version=1))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        ref = claim_next(sessions, Path("/nonexistent"), "bench")
        if ref is None:
            break
        finish(sessions, ref.job_id, token=ref.lease_token)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=20)[18]


def polling(sessions: SessionFactory) -> int:
    """Workers that sent a heartbeat after registering, i.e. that reached their claim loop."""
    with sessions() as s:
        rows = s.execute(select(NodeRun.started_at, NodeRun.seen_at)).all()
    sessions.kw["bind"].dispose()
    return sum(1 for started, seen in rows if seen - started > timedelta(seconds=0.5))


def idle_cost(tmp: Path, server: PgServer, n_workers: int, seconds: float) -> None:
    """Connections and commits per minute of ``n_workers`` idle workers on one PostgreSQL."""
    url = server.create_database()
    sessions = make_sessions(url)  # the schema, before the workers start
    sessions.kw["bind"].dispose()
    name = url.rsplit("/", 1)[1]
    procs = []
    for i in range(n_workers):
        config = tmp / f"idle-gpu-{i}.toml"
        config.write_text(f'[node]\nname = "gpu-{i}"\n[database]\nurl = "{url}"\n'
                          '[segmentation]\nbackend = "threshold"\n[prediction]\nenabled = false\n'
                          "[storage]\nshared = true\nmin_free_disk_mb = 0\n")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "worker", "--config", str(config),
             "--storage", str(tmp / "idle-storage")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    admin = server.admin()
    try:
        def stats() -> tuple[int, int]:
            connections = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                        (name,)).fetchone()
            commits = admin.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                                    (name,)).fetchone()
            return int(connections[0]), int(commits[0])

        deadline = time.monotonic() + 600
        while polling(sessions) < n_workers and time.monotonic() < deadline:
            time.sleep(1)  # every worker in its loop (importing the model stack takes a while)
        time.sleep(5)
        c0, x0 = stats()
        time.sleep(seconds)
        c1, x1 = stats()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        admin.close()
    print(f"\nidle: {n_workers} `dicomnode worker` processes, poll_interval_s 1, on one "
          f"PostgreSQL database: {max(c0, c1)} connections, "
          f"{(x1 - x0) / seconds * 60:.0f} commits/min over {seconds:.0f} s")


def node_config(path: Path, name: str, url: str) -> Path:
    """A receive-only node; on PostgreSQL its storage folder is marked shared."""
    database = f'[database]\nurl = "{url}"\n' if url else ""
    shared = "shared = true\n" if url else ""
    path.write_text(f'[node]\nname = "{name}"\nmax_associations = 32\n{database}'
                    f"[storage]\nmin_free_disk_mb = 0\n{shared}[worker]\nenabled = false\n")
    return path


class PeakConnections:
    """The most connections to one PostgreSQL database seen while it runs (polled each 0.2 s)."""

    def __init__(self, server: PgServer | None, url: str) -> None:
        self.server, self.name, self.peak = server, url.rsplit("/", 1)[1], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakConnections:
        if self.server is not None:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        assert self.server is not None
        with self.server.admin() as admin:
            while not self._stop.wait(0.2):
                row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                    (self.name,)).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)


def ingest(run: Path, folders: list[Path], server: PgServer | None, db: str,
           n_nodes: int) -> tuple[float, int]:
    """Images per second for ``folders`` sent at once, round-robin over ``n_nodes`` nodes, and
    the peak number of database connections (0 on SQLite)."""
    storage = run / "storage"
    url = server.create_database() if server and db == "postgresql" else ""
    sessions = make_sessions(url or f"sqlite:///{storage / 'dicomnode.db'}")  # schema first
    sessions.kw["bind"].dispose()  # no idle connection of ours in the nodes' count
    configs = [node_config(run / f"site-{i}.toml", f"site-{i}", url) for i in range(n_nodes)]
    nodes = [ServeProcess(storage, free_port(), settle_s=5.0, config=c) for c in configs]
    try:
        with PeakConnections(server if url else None, url or "/") as connections:
            start = time.perf_counter()
            procs = [storescu(f, nodes[i % n_nodes].port) for i, f in enumerate(folders)]
            codes = [p.wait(timeout=1800) for p in procs]
            seconds = time.perf_counter() - start
    finally:
        exits = [n.stop() for n in nodes]
    sent = sum(1 for f in folders for _ in f.glob("*.dcm"))
    with sessions() as s:
        stored = s.scalar(select(func.count(Instance.id))) or 0
    sessions.kw["bind"].dispose()
    if any(codes) or any(exits) or stored != sent:
        raise RuntimeError(f"ingest lost something: senders {codes}, nodes {exits}, "
                           f"{stored} of {sent} instances stored ({run})")
    return sent / seconds, connections.peak


def run_ingest(tmp: Path, server: PgServer | None, senders: int, slices: int, matrix: int,
               repeats: int) -> None:
    source = make_study(tmp / "ingest-source", seed=5, hemorrhage_ml=20.0, matrix=matrix,
                        n_slices=slices, thickness_mm=min(5.0, 150.0 / slices))
    mib = sum(p.stat().st_size for p in source.dicom_dir.glob("*.dcm")) / 2**20
    print(f"\ningest: {senders} storescu senders at once, each {slices} slices {matrix}x{matrix} "
          f"({mib:.1f} MiB), serve without its worker; {repeats} interleaved repeats")
    print("| layout | run | images/s | peak database connections | load average (1 min) "
          "before / after |")
    print("| --- | --- | --- | --- | --- |")
    results: dict[str, list[float]] = {}
    for k in range(repeats):
        for label, db, n_nodes in LAYOUTS:
            if db == "postgresql" and server is None:
                continue
            run = tmp / f"ingest-{k}-{db}-{n_nodes}"
            folders = [restamp(source.dicom_dir, run / "in" / f"{i:02d}") for i in range(senders)]
            before = os.getloadavg()[0]
            rate, peak = ingest(run, folders, server, db, n_nodes)
            results.setdefault(label, []).append(rate)
            print(f"| {label} | {k + 1} | {rate:.0f} | {peak or '-'} | "
                  f"{before:.1f} / {os.getloadavg()[0]:.1f} |", flush=True)
    print("\n| layout | images/s, median of runs |")
    print("| --- | --- |")
    for label, rates in results.items():
        print(f"| {label} | {statistics.median(rates):.0f} |")


def run_worker_counts(tmp: Path, server: PgServer | None, n_series: int,
                      worker_counts: list[int]) -> None:
    source = make_study(tmp / "source", seed=3, hemorrhage_ml=20.0, matrix=64, thickness_mm=5.0)
    print("| database | workers | jobs | seconds | jobs/min |")
    print("| --- | --- | --- | --- | --- |")
    latency = {}
    for db in ("sqlite", "postgresql"):
        if db == "postgresql" and server is None:
            print("| postgresql | - | - | - | (initdb/pg_ctl not installed) |")
            continue
        for n_workers in worker_counts:
            run = tmp / f"{db}-{n_workers}"
            storage = run / "storage"
            url = (server.create_database() if server and db == "postgresql"
                   else f"sqlite:///{storage / 'dicomnode.db'}")
            sessions = make_sessions(url)
            folders = [restamp(source.dicom_dir, run / "in" / str(i)) for i in range(n_series)]
            queue_series(InstanceStore(storage, sessions, min_free_disk_mb=0), folders)
            config = run / "worker.toml"
            config.write_text(f'[database]\nurl = "{url if db != "sqlite" else ""}"\n'
                              '[segmentation]\nbackend = "threshold"\n'
                              "[prediction]\nenabled = false\n"
                              "[worker]\npoll_interval_s = 0.05\n")
            seconds = run_workers(config, storage, sessions, n_workers, n_series)
            print(f"| {db} | {n_workers} | {n_series} | {seconds:.1f} | "
                  f"{n_series / seconds * 60:.0f} |", flush=True)
            if n_workers == worker_counts[0]:
                latency[db] = claim_latency_ms(sessions)
    print("\n| database | claim + finish, median ms | p95 ms |")
    print("| --- | --- | --- |")
    for db, (median, p95) in latency.items():
        print(f"| {db} | {median:.1f} | {p95:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "workers", "ingest", "idle"], default="all")
    parser.add_argument("--idle-workers", type=int, default=10)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from _common import machine_info

    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram']}; load average "
          f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at start")
    bindir = find_bin()
    server = PgServer(bindir) if bindir else None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp_name:
            tmp = Path(tmp_name)
            if args.part in ("all", "workers"):
                print(f"\nworkers: {args.series} series per run, threshold backend")
                run_worker_counts(tmp, server, args.series, args.workers)
            if args.part in ("all", "ingest"):
                run_ingest(tmp, server, args.senders, args.slices, args.matrix, args.repeats)
            if args.part in ("all", "idle") and server is not None:
                idle_cost(tmp, server, args.idle_workers, 60.0)
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
