"""Console benchmark: does the web console slow ingest, what it costs, how fast /metrics is.

1. ``bench/ingest.py``'s node run (same series, same storescu sender, fsync on) without the
   console, and with the console open and ``/metrics`` scraped every second, interleaved,
   median of the repeats: ingest with the console should be no more than 5 % lower.
2. The console process's resident memory (VmRSS) after the run.
3. ``/metrics`` response time on a database holding 10,000 series (with jobs and outbox rows).

    .venv/bin/python bench/console.py            # 300 slices, 3 repeats
    .venv/bin/python bench/console.py --quick    # 60 slices, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

from _common import (
    VENV_BIN,
    free_port,
    machine_info,
    make_ct_series,
    median,
    spawn,
    stop,
    wait_for_port,
)
from ingest import TEMPLATE, node_config, send, verify_node


def _children_rss_mib(pid: int, module: str) -> float:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if module.encode() in cmd and f"PPid:\t{pid}\n" in status:
            kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            return int(kb) / 1024
    return float("nan")


def _get(url: str) -> float:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback only
        r.read()
    return time.perf_counter() - t


def run_once(files_dir: Path, n: int, work: Path, console: bool) -> tuple[float, float]:
    """Seconds to ingest ``n`` slices; and the console's RSS (MiB) when it ran."""
    run = Path(tempfile.mkdtemp(prefix="console-" if console else "plain-", dir=work))
    folder, port, web_port = run / "recv", free_port(), free_port()
    folder.mkdir()
    config = node_config(folder, fsync=True)
    if console:
        config.write_text(config.read_text() + f"[web]\nport = {web_port}\n")
    proc = spawn([str(VENV_BIN / "dicomnode"), "serve", "--config", str(config), "--storage",
                  str(folder), "--port", str(port), "--settle-s", "2"],
                 log_path=run / "serve.log", cwd=run)
    scraping = threading.Event()
    rss = float("nan")
    try:
        wait_for_port(port, proc=proc, what="node", timeout_s=60)
        if console:
            wait_for_port(web_port, proc=proc, what="console", timeout_s=60)

            def scrape() -> None:
                while not scraping.wait(1.0):
                    _get(f"http://127.0.0.1:{web_port}/metrics")

            threading.Thread(target=scrape, daemon=True).start()
        seconds = send([files_dir], port, run).seconds
        verify_node(folder, n)
        if console:
            rss = _children_rss_mib(proc.pid, "dicomnode.runtime.console")
        return seconds, rss
    finally:
        scraping.set()
        stop(proc)
        shutil.rmtree(run, ignore_errors=True)


def metrics_time(work: Path, series: int) -> tuple[float, float]:
    """First and median-of-ten ``/metrics`` seconds with ``series`` analysed series."""
    from dicomnode.config import load_settings
    from dicomnode.db.models import Job, OutboxItem, Series, Study, utcnow
    from dicomnode.db.session import make_sessions
    from dicomnode.web.app import create_app
    from dicomnode.web.server import read_only_sessions, writing_sessions

    storage = work / "big"
    empty = Path(__file__).resolve().parents[1] / "tests" / "data" / "empty.toml"
    settings = load_settings(empty, overrides={"storage.path": str(storage), "web.port": 1})
    sessions = make_sessions(settings.database_url, sqlite_synchronous="NORMAL")
    now = utcnow()
    with sessions.begin() as s:
        study = Study(study_instance_uid="1.2.9")
        s.add(study)
        s.flush()
        for i in range(series):
            # Spread over the past weeks, as a department's history is (one every 3 minutes).
            at = now - timedelta(minutes=3 * i)
            row = Series(series_instance_uid=f"1.2.9.{i}", study_id=study.id, state="done",
                         instance_count=40, last_received_at=at - timedelta(minutes=5))
            s.add(row)
            s.flush()
            job = Job(series_id=row.id, version=1, state="done", finished_at=at,
                      timings_s={"load": 0.5, "segment": 4.0, "measure": 0.2, "predict": 0.3,
                                 "encode": 1.0})
            s.add(job)
            s.flush()
            for kind in ("seg", "sr"):
                s.add(OutboxItem(job_id=job.id, kind=kind, destination="pacs", path="x",
                                 sop_class_uid="1", sop_instance_uid=f"9.{i}.{kind}",
                                 state="sent", attempts=1, sent_at=at))
    from starlette.testclient import TestClient

    app = create_app(settings, read_only_sessions(settings), writing_sessions(settings))
    with TestClient(app) as client:
        t = time.perf_counter()
        assert client.get("/metrics").status_code == 200
        first = time.perf_counter() - t
        times = []
        for _ in range(10):
            t = time.perf_counter()
            client.get("/metrics")
            times.append(time.perf_counter() - t)
    return first, median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--series", type=int, default=10000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--metrics-only", action="store_true", help="only the /metrics timing")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 60, 1
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="dicomnode-bench-console-"))
    try:
        if args.metrics_only:
            first, typical = metrics_time(work, args.series)
            print(f"/metrics with {args.series} series: first scrape {first * 1000:.0f} ms, "
                  f"then median {typical * 1000:.0f} ms")
            return 0
        files = work / "series"
        make_ct_series(TEMPLATE, files, args.n)
        plain, with_console, rss = [], [], []
        for _ in range(args.repeats):
            plain.append(run_once(files, args.n, work, console=False)[0])
            seconds, mib = run_once(files, args.n, work, console=True)
            with_console.append(seconds)
            rss.append(mib)
        a, b = args.n / median(plain), args.n / median(with_console)
        print(f"ingest without console: {a:.1f} images/s; with console + /metrics every 1 s: "
              f"{b:.1f} images/s ({(b - a) / a * 100:+.1f} %); runs {plain} vs {with_console}")
        print(f"console resident memory: {median(rss):.0f} MiB")
        first, typical = metrics_time(work, args.series)
        print(f"/metrics with {args.series} series: first scrape {first * 1000:.0f} ms, "
              f"then median {typical * 1000:.0f} ms")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
