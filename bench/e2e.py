"""End-to-end benchmark: last instance acknowledged -> all outputs acknowledged by the PACS.

For a 5 mm and a 1 mm synthetic study: starts Orthanc (the PACS) and ``dicomnode serve`` with its
worker, sends the study with DCMTK ``storescu`` (TCP_NODELAY=1), and measures the time from the
last instance acknowledged to the last output stored in Orthanc, minus the settle time; the
worker's per-stage timings (load, segment, measure, encode) come from the job record.

    .venv/bin/python bench/e2e.py                     # unet backend, 512 matrix
    .venv/bin/python bench/e2e.py --backend threshold --matrix 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomnode.lab.orthanc import Orthanc, free_port  # noqa: E402

SETTLE_S = 2.0


def run_one(work: Path, thickness_mm: float, matrix: int, backend: str) -> dict:
    from dicomnode.lab.synth import make_study

    study = make_study(work / f"study-{thickness_mm:g}", seed=424242, hemorrhage_ml=30.0,
                       site="basal_ganglia", ivh=True, matrix=matrix, thickness_mm=thickness_mm)
    with Orthanc(work / f"orthanc-{thickness_mm:g}") as pacs:
        storage = work / f"storage-{thickness_mm:g}"
        config = work / f"node-{thickness_mm:g}.toml"
        config.write_text(
            f"[segmentation]\nbackend = \"{backend}\"\n"
            "[assembly]\nsweep_interval_s = 0.2\n[delivery]\ninterval_s = 0.2\n"
            "[storage]\nmin_free_disk_mb = 0\n[worker]\npoll_interval_s = 0.2\n"
            f"[[destinations]]\nname = \"orthanc\"\nae_title = \"ORTHANC\"\n"
            f"host = \"127.0.0.1\"\nport = {pacs.dicom_port}\n")
        port = free_port()
        log = open(work / f"serve-{thickness_mm:g}.log", "wb")  # noqa: SIM115
        node = subprocess.Popen([sys.executable, "-m", "dicomnode.cli", "serve", "--config",
                                 str(config), "--storage", str(storage), "--port", str(port),
                                 "--settle-s", str(SETTLE_S)], stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            _wait_port(port)
            time.sleep(3.0)  # the worker loads its model
            subprocess.run(["storescu", "-R", "+sd", "+sp", "*.dcm", "-aec", "DICOMNODE",
                            "127.0.0.1", str(port), f"{study.dicom_dir}/"],
                           env={**os.environ, "TCP_NODELAY": "1"}, check=True,
                           capture_output=True, timeout=600)
            acked = time.perf_counter()
            row = _wait_delivered(storage)
            done = time.perf_counter()
            n_outputs = len(pacs.get("/instances"))
        finally:
            node.terminate()
            node.wait(timeout=60)
        job = _job_timings(storage)
    return {"thickness_mm": thickness_mm, "slices": study.n_slices, "matrix": matrix,
            "seconds_after_settle": round(done - acked - SETTLE_S, 2), "outputs": n_outputs,
            "delivery": row["delivery"], "stages_s": job}


def _wait_port(port: int, timeout_s: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("node did not start")


def _status(storage: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "dicomnode.cli", "status", "--json", "--config",
                          str(REPO / "tests" / "data" / "empty.toml"), "--storage", str(storage)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _wait_delivered(storage: Path, timeout_s: float = 1800) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _status(storage)
        if rows and rows[0]["state"] == "failed":
            raise RuntimeError(f"job failed: {rows[0]['reason']}")
        if rows and rows[0]["state"] == "done" and rows[0]["delivery"] and \
                not rows[0]["delivery"]["pending"]:
            return rows[0]
        time.sleep(0.25)
    raise RuntimeError("results not delivered in time")


def _job_timings(storage: Path) -> dict:
    import sqlite3

    con = sqlite3.connect(storage / "dicomnode.db")
    try:
        (timings,) = con.execute("SELECT timings_s FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        con.close()
    return json.loads(timings)


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    sys.path.insert(0, str(REPO / "bench"))
    from segment import machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backend", default="unet")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--thickness", default="5,1")
    args = ap.parse_args()
    console = Console()
    console.print(f"dicomnode end-to-end benchmark {time.strftime('%Y-%m-%d')}; machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dicomnode-e2e-") as tmp:
        for t in (float(v) for v in args.thickness.split(",")):
            rows.append(run_one(Path(tmp), t, args.matrix, args.backend))
    table = Table(title=f"last instance acked -> all outputs in Orthanc, minus settle "
                        f"({SETTLE_S:g} s); backend {args.backend}")
    for col in ("study", "outputs", "seconds", "load", "segment", "measure", "encode", "worker total"):
        table.add_column(col)
    for r in rows:
        s = r["stages_s"]
        table.add_row(f"{r['thickness_mm']:g} mm, {r['slices']} x {r['matrix']}^2", str(r["outputs"]),
                      f"{r['seconds_after_settle']:.1f}", *(f"{s.get(k, 0):.2f}" for k in
                                                           ("load", "segment", "measure",
                                                            "encode", "total")))
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
