"""Scale-out overheads: jobs per minute with 1, 2 and 4 workers, and claim latency, on SQLite and
on PostgreSQL (a throwaway server, as in the tests).

Each run queues the same synthetic head CTs (64 x 64, 5 mm; ``threshold`` backend on the CPU),
starts N ``dicomnode worker`` processes and times from the first claim to the last finished job.
Claim latency is ``claim_next`` + ``finish`` on a queue of empty jobs, in one process.
On a machine with fewer cores than workers the figures show the coordination overhead, not a
speed-up. Usage: ``python bench/scaleout.py [--series 8] [--workers 1 2 4]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from dicomnode.assemble.series import sweep  # noqa: E402
from dicomnode.config import AssemblySettings, EligibilitySettings  # noqa: E402
from dicomnode.db.models import Job, Series, Study, utcnow  # noqa: E402
from dicomnode.db.session import SessionFactory, make_sessions  # noqa: E402
from dicomnode.jobs.queue import claim_next, finish  # noqa: E402
from dicomnode.lab.synth import make_study  # noqa: E402
from dicomnode.receive.instance_store import InstanceStore  # noqa: E402
from tests.pg_server import PgServer, find_bin  # noqa: E402
from tests.reliability.harness import restamp  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    from _common import machine_info

    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram']}; "
          f"{args.series} series per run, threshold backend")
    bindir = find_bin()
    server = PgServer(bindir) if bindir else None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp_name:
            tmp = Path(tmp_name)
            source = make_study(tmp / "source", seed=3, hemorrhage_ml=20.0, matrix=64,
                                thickness_mm=5.0)
            print("| database | workers | jobs | seconds | jobs/min |")
            print("| --- | --- | --- | --- | --- |")
            latency = {}
            for db in ("sqlite", "postgresql"):
                if db == "postgresql" and server is None:
                    print("| postgresql | - | - | - | (initdb/pg_ctl not installed) |")
                    continue
                for n_workers in args.workers:
                    run = tmp / f"{db}-{n_workers}"
                    storage = run / "storage"
                    url = (server.create_database() if server and db == "postgresql"
                           else f"sqlite:///{storage / 'dicomnode.db'}")
                    sessions = make_sessions(url)
                    folders = [restamp(source.dicom_dir, run / "in" / str(i))
                               for i in range(args.series)]
                    queue_series(InstanceStore(storage, sessions, min_free_disk_mb=0), folders)
                    config = run / "worker.toml"
                    config.write_text(f'[database]\nurl = "{url if db != "sqlite" else ""}"\n'
                                      '[segmentation]\nbackend = "threshold"\n'
                                      "[prediction]\nenabled = false\n"
                                      "[worker]\npoll_interval_s = 0.05\n")
                    seconds = run_workers(config, storage, sessions, n_workers, args.series)
                    print(f"| {db} | {n_workers} | {args.series} | {seconds:.1f} | "
                          f"{args.series / seconds * 60:.0f} |", flush=True)
                    if n_workers == args.workers[0]:
                        latency[db] = claim_latency_ms(sessions)
            print("\n| database | claim + finish, median ms | p95 ms |")
            print("| --- | --- | --- |")
            for db, (median, p95) in latency.items():
                print(f"| {db} | {median:.1f} | {p95:.1f} |")
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
