"""Chaos on two hosts, simulated on loopback: two nodes and an extra worker on one PostgreSQL.

Node ``site-a`` and node ``site-b`` (``dicomnode serve``, each with its own configuration, port
and name) and a ``dicomnode worker`` named ``gpu-1`` share one PostgreSQL database and one
storage folder, and deliver to one Orthanc. Studies go to both nodes at once (one series split
across the two). Meanwhile a worker is SIGKILLed mid-job, node ``site-b`` is SIGKILLed
mid-delivery (Orthanc frozen so that the delivery hangs) and restarted, and the PostgreSQL server
restarts. At the end: every acknowledged instance is stored once, every series was assembled and
processed once (one job, version 1), each result is in Orthanc once under its first UIDs, and no
job was taken from a live worker (no ``LeaseLost`` in any log).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.db.models import Job, NodeRun, OutboxItem
from dicomnode.db.session import make_sessions
from dicomnode.lab.orthanc import Orthanc, free_port
from dicomnode.lab.synth import make_study
from tests.pg_server import PgServer
from tests.reliability.conftest import record
from tests.reliability.harness import (
    SeriesFiles,
    ServeProcess,
    db_instances,
    files_on_disk,
    jobs,
    orthanc_uids,
    outbox,
    restamp,
    send,
    wait_until,
)

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent")
LEASE_S, RENEW_S = 6.0, 1.0


def config(path: Path, name: str, db_url: str, orthanc_port: int) -> Path:
    path.write_text(
        f'[node]\nname = "{name}"\n[database]\nurl = "{db_url}"\n'
        "[storage]\nmin_free_disk_mb = 0\nshared = true\n"
        '[segmentation]\nbackend = "threshold"\n[prediction]\nenabled = false\n'
        "[assembly]\nsweep_interval_s = 0.2\n"
        f"[worker]\npoll_interval_s = 0.2\nlease_s = {LEASE_S}\nrenew_s = {RENEW_S}\n"
        "[delivery]\ninterval_s = 0.5\nretry_base_s = 0.5\nretry_max_s = 2\ntimeout_s = 3\n"
        '[[destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
        f'port = {orthanc_port}\noutputs = ["seg", "sr"]\n')
    return path


class Worker:
    """``dicomnode worker --config F`` as a process (a GPU host of its own)."""

    def __init__(self, cfg: Path, storage: Path, log: Path) -> None:
        self.cfg, self.storage, self.log = cfg, storage, log
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomnode.cli", "worker", "--config", str(self.cfg),
                 "--storage", str(self.storage)], stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def send_until_acked(study: SeriesFiles, port: int, acked: set[str]) -> None:
    """A sender that retries (as a modality does) until every instance is acknowledged."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if send(study, port, acked):
                return
        except AssertionError:  # refused while the database was away: send again
            pass
        time.sleep(0.5)
    raise AssertionError("a series could not be delivered to the node in 120 s")


def test_two_nodes_and_a_worker_survive_kills_and_a_database_restart(
        tmp_path: Path, pg_server: PgServer) -> None:
    db_url = pg_server.create_database(template="dicomnode_head")
    storage = tmp_path / "shared"
    pacs = Orthanc(tmp_path / "orthanc").start()
    cfg = {n: config(tmp_path / f"{n}.toml", n, db_url, pacs.dicom_port)
           for n in ("site-a", "site-b", "gpu-1")}
    ports = {"site-a": free_port(), "site-b": free_port()}
    source = make_study(tmp_path / "source", seed=7, hemorrhage_ml=20.0, matrix=64,
                        thickness_mm=5.0)
    series = [SeriesFiles.read(restamp(source.dicom_dir, tmp_path / "in" / str(i)))
              for i in range(5)]
    sessions = make_sessions(db_url)
    nodes = {n: ServeProcess(storage, ports[n], settle_s=2.0, config=cfg[n]) for n in ports}
    gpu = Worker(cfg["gpu-1"], storage, tmp_path / "gpu-1.log")
    acked: set[str] = set()
    started = time.monotonic()
    kills: list[str] = []
    os.kill(pacs.proc.pid, signal.SIGSTOP)  # frozen until phase 2: results wait in the outbox
    try:
        # Phase 1: studies to both nodes at once; series 4 split across the two receivers.
        split = series[4]
        halves = [dict(list(split.files.items())[i::2]) for i in (0, 1)]
        sends = [(series[0], "site-a"), (series[1], "site-b"), (series[2], "site-a"),
                 (series[3], "site-b"), (SeriesFiles(split.series_uid, halves[0]), "site-a"),
                 (SeriesFiles(split.series_uid, halves[1]), "site-b")]
        threads = [threading.Thread(target=send_until_acked, args=(s, ports[n], acked))
                   for s, n in sends]
        for t in threads:
            t.start()
        # A worker SIGKILLed mid-job: whichever holds the first job in processing.
        holder = wait_until(lambda: _processing_holder(sessions), 90, "a job in processing")
        if holder == "gpu-1":
            gpu.proc.kill()
            gpu.proc.wait()
            gpu.start()  # restarted at once: releases its previous run's claim
        else:
            pid = nodes[holder.split("/")[0]].worker_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)  # serve restarts its worker child
        kills.append(f"worker {holder}")
        for t in threads:
            t.join()
        # Phase 2: the node holding a delivery claim is SIGKILLed mid-delivery (Orthanc is
        # frozen: its associations hang until they time out).
        try:
            wait_until(lambda: _all_processed(sessions, len(series)), 120, "every series done")
            sender = wait_until(lambda: _claimer(sessions), 60, "a node delivering")
            nodes[sender].kill()
            kills.append(f"node {sender} mid-delivery")
        finally:
            os.kill(pacs.proc.pid, signal.SIGCONT)
        # Phase 3: the PostgreSQL server restarts while that node comes back and delivers.
        pg_server.restart(down_s=2.0)
        kills.append("postgresql restart")
        nodes[sender] = ServeProcess(storage, ports[sender], settle_s=2.0, config=cfg[sender])
        wait_until(lambda: _all_processed(sessions, len(series)) and outbox(sessions) and all(
            o["state"] == "sent" for o in outbox(sessions)), 180, "every result delivered")
        in_orthanc = orthanc_uids(pacs)
        names = _nodes(sessions)
    finally:
        codes = {n: node.stop() for n, node in nodes.items()}
        gpu.stop()
        pacs.stop()
    elapsed = time.monotonic() - started
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    assert codes == {"site-a": 0, "site-b": 0}
    expected = {u for s in series for u in s.files.values()}
    assert acked == expected
    assert set(db_instances(sessions)) == expected  # every acknowledged instance stored once
    assert len(files_on_disk(storage)) == len(expected)
    js = jobs(sessions)
    assert sorted(j["series_uid"] for j in js) == sorted(s.series_uid for s in series)
    assert all(j["state"] == "done" and j["version"] == 1 for j in js), js
    rows = outbox(sessions)
    produced = {i["sop_instance_uid"] for j in js for i in j["items"] if i["kind"] in ("seg", "sr")}
    assert {o["sop_instance_uid"] for o in rows} == produced
    assert sorted(in_orthanc) == sorted(produced)  # once each, under the first UIDs
    assert "LeaseLost" not in logs and "no longer ours" not in logs, "a live worker lost a job"
    assert {"site-a", "site-b", "gpu-1"} <= names
    record("scaleout_chaos", "2 nodes + 1 worker on PostgreSQL, shared folder, Orthanc",
           series=len(series), instances=len(expected), results=len(produced), kills=kills,
           attempts=sorted(j["attempts"] for j in js), elapsed_s=round(elapsed, 1))


def _processing_holder(sessions) -> str | None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return s.scalar(select(Job.worker).where(Job.state == "processing").limit(1))


def _claimer(sessions) -> str | None:  # type: ignore[no-untyped-def]
    """The node holding a live delivery claim, if any."""
    with sessions() as s:
        return s.scalar(select(OutboxItem.claimed_by).where(OutboxItem.lease_token.is_not(None))
                        .limit(1))


def _all_processed(sessions, n: int) -> bool:  # type: ignore[no-untyped-def]
    try:
        js = jobs(sessions)
    except Exception:  # noqa: BLE001 - the database may be restarting
        return False
    return len(js) == n and all(j["state"] == "done" for j in js)


def _nodes(sessions) -> set[str]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return set(s.scalars(select(NodeRun.name)))
