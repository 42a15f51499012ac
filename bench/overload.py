"""Overload benchmark: N senders at once, each sending its own study, to ``dicomnode serve``.

Starts ``dicomnode serve`` (receiver + worker, threshold backend, fsync on) with
``[node] max_associations`` = N, then N DCMTK ``storescu`` processes at once (TCP_NODELAY=1),
each sending one synthetic study of S slices (new UIDs per sender). Measures the throughput
from the first association to the last acknowledged instance, the peak resident memory (VmHWM)
of ``serve`` and of its worker, and the time from the last acknowledged instance until the worker
queue is empty (every series processed). Fails if an instance or association was refused or a
series is missing. ``tests/reliability/test_overload.py`` runs it (3 x 40 in CI, 10 x 300 in
``make reliability``).

    .venv/bin/python bench/overload.py                        # 10 senders x 300 slices, 128x128
    .venv/bin/python bench/overload.py --senders 3 --slices 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dicomnode.db.session import make_sessions  # noqa: E402
from dicomnode.lab.orthanc import free_port  # noqa: E402
from tests.reliability.harness import (  # noqa: E402
    PeakRss,
    ServeProcess,
    db_instances,
    jobs,
    node_config,
    refusals,
    restamp,
    sessions_for,
    storescu,
    wait_until,
    with_database,
)


def run_overload(work: Path, *, senders: int = 10, slices: int = 300, matrix: int = 128,
                 max_associations: int | None = None, drain_timeout_s: float = 3600,
                 db_url: str = "") -> dict:
    """Run one overload measurement in ``work``; returns its figures. Raises on any loss.

    ``db_url``: the node's database (default: SQLite in the storage folder).
    """
    from dicomnode.lab.synth import make_study

    thickness_mm = min(5.0, max(0.5, 150.0 / slices))  # a head-sized extent
    source = make_study(work / "source", seed=17, hemorrhage_ml=25.0, matrix=matrix,
                        n_slices=slices, thickness_mm=thickness_mm)
    folders = [restamp(source.dicom_dir, work / "in" / f"{i:02d}") for i in range(senders)]
    mib = sum(p.stat().st_size for f in folders for p in f.glob("*.dcm")) / 2**20
    config = node_config(work / "node.toml", max_associations=max_associations or senders)
    storage = work / "storage"
    if db_url:
        config = with_database(config, db_url, config)
    node = ServeProcess(storage, free_port(), settle_s=2.0, config=config)
    sessions = make_sessions(db_url) if db_url else sessions_for(storage)
    try:
        wait_until(node.worker_pid, 60, "the worker")
        peak = PeakRss(node)
        peak.start()
        start = time.perf_counter()
        procs = [storescu(f, node.port) for f in folders]
        for p in procs:
            p.wait(timeout=drain_timeout_s)
        acked = time.perf_counter()
        queue_peak = 0

        def drained() -> bool:
            nonlocal queue_peak
            js = jobs(sessions)
            queue_peak = max(queue_peak, sum(1 for j in js if j["state"] != "done"))
            return len(js) >= senders and all(j["state"] in ("done", "failed") for j in js)

        wait_until(drained, drain_timeout_s, "the worker queue to drain", 0.5)
        done = time.perf_counter()
        peak.finish()
    finally:
        code = node.stop()
    refused, rejected = refusals(sessions)
    js = jobs(sessions)
    in_database = len(db_instances(sessions))
    sessions.kw["bind"].dispose()
    failed_senders = [f.with_suffix(".log").read_text(errors="replace")[-500:]
                      for p, f in zip(procs, folders, strict=True) if p.returncode]
    figures: dict[str, Any] = {
        "senders": senders, "slices_per_study": slices, "matrix": matrix,
        "slice_thickness_mm": thickness_mm, "instances_sent": senders * slices,
        "mib_sent": round(mib, 1), "in_database": in_database,
        "refused_instances": refused, "rejected_associations": rejected,
        "failed_senders": len(failed_senders),
        "series_processed": sum(1 for j in js if j["state"] == "done"),
        "jobs_failed": sum(1 for j in js if j["state"] == "failed"),
        "ingest_s": round(acked - start, 1),
        "throughput_img_s": round(senders * slices / (acked - start), 1),
        "throughput_mb_s": round(mib * 2**20 / 1e6 / (acked - start), 1),
        "queue_peak_jobs": queue_peak, "drain_after_last_ack_s": round(done - acked, 1),
        "processing_img_s": round(senders * slices / (done - start), 1),
        "peak_rss_serve_mib": round(peak.serve_mib, 1),
        "peak_rss_worker_mib": round(peak.worker_mib, 1), "serve_exit_code": code,
    }
    problems = []
    if refused or rejected or failed_senders:
        problems.append(f"refused {refused}, rejected associations {rejected}, "
                        f"failed senders {failed_senders}")
    if figures["in_database"] != senders * slices:
        problems.append(f"{figures['in_database']} of {senders * slices} instances stored")
    if figures["series_processed"] != senders or len(js) != senders:
        problems.append(f"{figures['series_processed']} of {senders} series processed "
                        f"({len(js)} jobs): {[j['error'] for j in js if j['error']]}")
    if code != 0:
        problems.append(f"serve exited with {code}")
    if problems:
        raise RuntimeError("overload run lost something: " + "; ".join(problems))
    return figures


def table(figures: dict, machine: str) -> str:
    """The figures as a Markdown table."""
    f = figures
    head = ("| senders x slices | matrix | images | MiB | ingest s | images/s | MB/s "
            "| drain after last ack s | peak RSS serve MiB | peak RSS worker MiB | refused |")
    row = (f"| {f['senders']} x {f['slices_per_study']} | {f['matrix']} | {f['instances_sent']} "
           f"| {f['mib_sent']} | {f['ingest_s']} | {f['throughput_img_s']} "
           f"| {f['throughput_mb_s']} | {f['drain_after_last_ack_s']} "
           f"| {f['peak_rss_serve_mib']} | {f['peak_rss_worker_mib']} "
           f"| {f['refused_instances'] + f['rejected_associations']} |")
    return f"Machine: {machine}\n\n{head}\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{row}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--max-associations", type=int, default=None,
                        help="[node] max_associations (default: the number of senders)")
    args = parser.parse_args()
    from tests.reliability.conftest import machine

    with tempfile.TemporaryDirectory(prefix="dicomnode-overload-") as work:
        figures = run_overload(Path(work), senders=args.senders, slices=args.slices,
                               matrix=args.matrix, max_associations=args.max_associations)
    print(table(figures, machine()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
