"""Crash suite: SIGKILL ``dicomnode serve`` at random points and restart it at once.

Each round sends one new series, then kills the node while it receives that series, while the
worker processes it, or while the outbox delivers its results to Orthanc; the worker must die
with its parent and a new node must listen on the same port at once. Interrupted senders send
their whole series again, as real modalities do. At the end every acknowledged instance must be
on disk and in the database, every series version processed exactly once, and every result in
Orthanc exactly once under the UIDs it was first given.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dicomnode.db.session import make_sessions
from dicomnode.encode.uids import instance_uid
from dicomnode.lab.orthanc import Orthanc, free_port
from dicomnode.lab.synth import make_study
from tests.reliability.conftest import PROFILE, on_databases, record, scale, scenario
from tests.reliability.harness import (
    Peer,
    SeriesFiles,
    ServeProcess,
    children,
    db_instances,
    files_on_disk,
    jobs,
    node_config,
    orthanc_uids,
    outbox,
    restamp,
    send,
    wait_gone,
    wait_until,
    with_database,
)

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent")
KILLS = scale(5, 21)  # of the whole node
WORKER_KILLS = scale(1, 4)  # of the worker alone
PHASES = ("receive", "processing", "delivery")
SEED = int(os.environ.get("DICOMNODE_CRASH_SEED", "7"))


def _job_of(sessions, series_uid: str, state: str | None = None):  # type: ignore[no-untyped-def]
    return next((j for j in jobs(sessions) if j["series_uid"] == series_uid
                 and (state is None or j["state"] == state)), None)


class Round:
    """One kill: what was sent, where the node was, and how it came back."""

    def __init__(self, pacs: Orthanc, sessions, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
        self.pacs, self.sessions, self.rng = pacs, sessions, rng
        self.unrecorded = 0  # results in Orthanc whose outbox row was not yet marked sent

    def receive(self, node: ServeProcess, series: SeriesFiles, acked: set[str]) -> bool:
        """Kill after a random number of acknowledged instances; the rest is in flight."""
        at = self.rng.randint(1, len(series.files) - 1)
        reached = threading.Event()
        done: list[bool] = []
        sender = threading.Thread(target=lambda: done.append(send(
            series, node.port, acked, lambda n: n >= at and reached.set())))
        sender.start()
        assert reached.wait(60), "sender made no progress"
        self.kill(node)
        sender.join(60)
        return bool(done and done[0])

    def processing(self, node: ServeProcess, series: SeriesFiles, acked: set[str]) -> bool:
        """Kill at a random moment after the worker has claimed the series' job."""
        self.claimed(node, series, acked)
        self.kill(node)
        return True

    def delivery(self, node: ServeProcess, series: SeriesFiles, acked: set[str]) -> bool:
        """Kill as the first result reaches Orthanc (before the outbox can record it), or a
        little later in the same association."""
        assert send(series, node.port, acked)
        before = len(self.pacs.get("/instances"))
        wait_until(lambda: _job_of(self.sessions, series.series_uid, "done"), 60, "job done",
                   0.05)
        wait_until(lambda: len(self.pacs.get("/instances")) > before, 30, "a delivery", 0.02)
        time.sleep(self.rng.uniform(0.0, 0.1))
        self.kill(node)
        in_pacs = set(orthanc_uids(self.pacs))
        self.unrecorded += sum(1 for o in outbox(self.sessions)
                               if o["state"] == "pending" and o["sop_instance_uid"] in in_pacs)
        return True

    def worker(self, node: ServeProcess, series: SeriesFiles, acked: set[str]) -> bool:
        """Kill only the worker while it processes: ``serve`` restarts it and re-queues its
        job (the node itself keeps running)."""
        self.claimed(node, series, acked)
        pid = node.worker_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: node.worker_pid() not in (None, pid), 30, "a new worker")
        return True

    def claimed(self, node: ServeProcess, series: SeriesFiles, acked: set[str]) -> None:
        """Send the series, wait until the worker claims its job, then a random moment."""
        assert send(series, node.port, acked)
        wait_until(lambda: _job_of(self.sessions, series.series_uid, "processing")
                   or _job_of(self.sessions, series.series_uid, "done"), 60, "job claimed", 0.05)
        time.sleep(self.rng.uniform(0.0, 2.0))

    def kill(self, node: ServeProcess) -> None:
        self.kids = children(node.pid)
        node.kill()


@on_databases
def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path, db_url: str) -> None:
    rng = random.Random(SEED)
    storage, port = tmp_path / "storage", free_port()
    source = make_study(tmp_path / "source", seed=3, hemorrhage_ml=20.0, matrix=64,
                        thickness_mm=5.0)
    plan = [PHASES[i % len(PHASES)] for i in range(KILLS)] + ["worker"] * WORKER_KILLS
    rng.shuffle(plan)
    started = time.monotonic()
    with Orthanc(tmp_path / "orthanc") as pacs:
        config = with_database(node_config(tmp_path / "node.toml", destinations=[
            Peer("orthanc", "ORTHANC", pacs.dicom_port)]), db_url, tmp_path / "node.toml")
        sessions = make_sessions(db_url)
        acked: set[str] = set()
        sent: list[SeriesFiles] = []
        interrupted: list[SeriesFiles] = []
        restart_s, child_exit_s = [], []
        node = ServeProcess(storage, port, settle_s=1.0, config=config)
        try:
            wait_until(node.worker_pid, 30, "the worker")
            rounds = Round(pacs, sessions, rng)
            for i, phase in enumerate(plan):
                # Senders whose association died send the whole series again.
                interrupted = [s for s in interrupted if not send(s, port, acked)]
                series = SeriesFiles.read(restamp(source.dicom_dir, tmp_path / "in" / f"{i:02d}"))
                sent.append(series)
                if not getattr(rounds, phase)(node, series, acked):
                    interrupted.append(series)
                if phase == "worker":
                    continue
                assert rounds.kids, "serve had no worker child when it was killed"
                child_exit_s.append(wait_gone(rounds.kids, timeout_s=10))
                # Restart at once on the same port: nothing orphaned may hold it.
                node = ServeProcess(storage, port, settle_s=1.0, config=config)
                restart_s.append(node.start_s)
                rows = db_instances(sessions)
                assert acked <= rows.keys(), f"round {i} ({phase}): acknowledged instance lost"
                assert all((storage / rows[u]).is_file() for u in acked)
            for s in interrupted:
                assert send(s, port, acked)
            wait_until(lambda: _settled(sessions), 300, "every job done and delivered", 0.5)
            time.sleep(2)  # nothing more arrives later
            stored = orthanc_uids(pacs)
        finally:
            code = node.stop()
    assert code == 0, "serve did not stop cleanly"
    _check_and_record(storage, sessions, sent, acked, stored, plan, restart_s, child_exit_s,
                      time.monotonic() - started, rounds.unrecorded, scenario("crash", db_url))
    sessions.kw["bind"].dispose()


def _settled(sessions) -> bool:  # type: ignore[no-untyped-def]
    js = jobs(sessions)
    series_latest = {(j["series_uid"], j["latest"]) for j in js}
    have = {(j["series_uid"], j["version"]) for j in js}
    return bool(js) and series_latest <= have and all(j["state"] == "done" for j in js) and \
        all(o["state"] == "sent" for o in outbox(sessions))


def _check_and_record(storage: Path, sessions, sent: list[SeriesFiles], acked: set[str],  # type: ignore[no-untyped-def]
                      stored: list[str], plan: list[str], restart_s: list[float],
                      child_exit_s: list[float], runtime_s: float, unrecorded: int,
                      name: str) -> None:
    every = {u for s in sent for u in s.files.values()}
    rows = db_instances(sessions)
    disk = files_on_disk(storage)
    assert acked == every, "a re-sent series was not fully acknowledged"
    assert set(rows) == acked and set(rows.values()) == disk
    assert not [p for p in (storage / ".tmp").rglob("*") if p.is_file()]
    js = jobs(sessions)
    versions = Counter((j["series_uid"], j["version"]) for j in js)
    assert max(versions.values()) == 1 and all(j["state"] == "done" for j in js)
    assert {s.series_uid for s in sent} == {j["series_uid"] for j in js}
    expected: set[str] = set()
    for j in js:
        expected |= {i["sop_instance_uid"] for i in j["items"]}
        seg = next(i for i in j["items"] if i["kind"] == "seg")
        # Results are named by (series, version, kind, index): a re-run or a resend after a
        # crash reuses the same UIDs, so the PACS cannot end up with two copies.
        assert seg["sop_instance_uid"] == instance_uid(j["series_uid"], j["version"], "seg")
    items = outbox(sessions)
    assert {o["sop_instance_uid"] for o in items} == expected
    assert len(stored) == len(set(stored)) and set(stored) == expected
    record(name, "SIGKILL of `dicomnode serve` (and so its worker) at random points of "
           "receive, processing and delivery, restart at once on the same port; plus SIGKILL "
           "of the worker alone while processing; "
           f"series of {len(sent[0].files)} slices, 64x64, threshold backend, Orthanc as the PACS",
           kills=sum(1 for p in plan if p != "worker"), kills_by_phase=dict(Counter(plan)),
           seed=SEED, series=len(sent),
           instances_sent=len(every), acknowledged=len(acked), in_database=len(rows),
           on_disk=len(disk), series_versions=len(versions),
           jobs_done_once=sum(1 for n in versions.values() if n == 1),
           jobs_rerun_after_kill=sum(1 for j in js if j["attempts"] > 1),
           outputs_expected=len(expected), outputs_in_orthanc=len(stored),
           duplicates_in_orthanc=len(stored) - len(set(stored)),
           # Acknowledged by Orthanc but killed before the row was marked sent: sent again.
           outputs_sent_again_after_kill=unrecorded,
           max_restart_to_listening_s=round(max(restart_s), 2),
           max_worker_exit_after_kill_s=round(max(child_exit_s), 3),
           runtime_s=round(runtime_s, 1), profile=PROFILE)
