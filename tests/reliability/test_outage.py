"""Outage suite: the PACS hangs, then is down, then comes back; two results are broken meanwhile.

Destinations: Orthanc (every output) and an older PACS that refuses SEG (so it gets overlays
instead). Orthanc is first frozen with SIGSTOP (associations time out), then killed (connections
refused), then started again. Series keep arriving throughout. At the end every result has
reached every destination exactly once, except the two broken files (one deleted, one cut
short), which fail permanently after one attempt and are never retried; the refused SEG too.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from dicomnode.db.session import make_sessions
from dicomnode.lab.orthanc import Orthanc, free_port
from dicomnode.lab.synth import make_study
from tests.reliability.conftest import PROFILE, on_databases, record, scale, scenario
from tests.reliability.harness import (
    Peer,
    PickyPacs,
    SeriesFiles,
    ServeProcess,
    jobs,
    node_config,
    orthanc_uids,
    outbox,
    restamp,
    send,
    wait_until,
    with_database,
)

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc absent")
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture (overlays)
HUNG_S = scale(6.0, 30.0)
DOWN_S = scale(6.0, 60.0)
SERIES_PER_PHASE = scale(1, 3)
FLAKY_ABORTS = 3  # the older PACS aborts the association on one overlay this many times


def _rows(sessions, destination: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [o for o in outbox(sessions) if o["destination"] == destination]


def _all_done(sessions, n_series: int) -> bool:  # type: ignore[no-untyped-def]
    js = jobs(sessions)
    return len(js) == n_series and all(j["state"] == "done" for j in js)


@on_databases
def test_pacs_outage_every_result_arrives_and_bad_items_fail_once(tmp_path: Path,
                                                                  db_url: str) -> None:
    storage, port = tmp_path / "storage", free_port()
    source = make_study(tmp_path / "source", seed=5, hemorrhage_ml=20.0, matrix=64,
                        thickness_mm=5.0)
    first = SeriesFiles.read(restamp(source.dicom_dir, tmp_path / "in" / "0"))
    pacs = Orthanc(tmp_path / "orthanc").start()
    # The first overlay the older PACS receives is the flaky one (whichever it is).
    old = PickyPacs(free_port(), classes=[SR_CLASS, SC_CLASS],
                    abort_first_of_class=(SC_CLASS, FLAKY_ABORTS))
    peers = [Peer("orthanc", "ORTHANC", pacs.dicom_port),
             Peer("old", "OLDPACS", old.port, ("seg", "sr"))]
    config = node_config(tmp_path / "node.toml", delivery_timeout_s=2.0, destinations=peers)
    config = with_database(config, db_url, config)
    sessions = make_sessions(db_url)
    node = ServeProcess(storage, port, settle_s=3.0, config=config)
    acked: set[str] = set()
    series: list[SeriesFiles] = []

    def arrive(n: int) -> None:
        for _ in range(n):
            s = first if not series else SeriesFiles.read(
                restamp(source.dicom_dir, tmp_path / "in" / f"{len(series)}"))
            series.append(s)
            assert send(s, port, acked), "the node refused or dropped a series during the outage"

    try:
        arrive(SERIES_PER_PHASE)  # PACS up
        wait_until(lambda: _all_done(sessions, len(series)) and not [
            o for o in outbox(sessions) if o["state"] == "pending"], 60, "first delivery")
        outage_start = time.monotonic()
        os.kill(pacs.proc.pid, signal.SIGSTOP)  # hung: TCP accepted, no A-ASSOCIATE-AC
        arrive(SERIES_PER_PHASE)
        wait_until(lambda: _all_done(sessions, len(series)), 60, "processing during the hang")
        time.sleep(max(0.0, HUNG_S - (time.monotonic() - outage_start)))
        os.kill(pacs.proc.pid, signal.SIGKILL)  # then down: connection refused
        pacs.proc.wait()
        pacs.proc = None
        arrive(SERIES_PER_PHASE)
        wait_until(lambda: _all_done(sessions, len(series)), 60, "processing while down")
        broken = _break_two_results(storage, sessions)
        time.sleep(max(0.0, HUNG_S + DOWN_S - (time.monotonic() - outage_start)))
        waiting = [o for o in _rows(sessions, "orthanc") if o["state"] == "pending"]
        pacs.start()
        outage_s = time.monotonic() - outage_start
        wait_until(lambda: not [o for o in outbox(sessions) if o["state"] == "pending"], 120,
                   "delivery after the outage")
        recovery_s = time.monotonic() - outage_start - outage_s
        before = {(o["destination"], o["sop_instance_uid"]): o["attempts"]
                  for o in outbox(sessions)}
        time.sleep(4)  # several delivery cycles: nothing failed is tried again
        after = {(o["destination"], o["sop_instance_uid"]): o["attempts"]
                 for o in outbox(sessions)}
        in_orthanc = orthanc_uids(pacs)
    finally:
        code = node.stop()
        pacs.stop()
        old.stop()
    assert code == 0, "serve did not stop cleanly"
    assert acked == {u for s in series for u in s.files.values()}
    retried = sum(after[k] - before[k] for k in before)
    assert retried == 0, "an item was tried again after it had failed permanently"
    # The flaky overlay made the PACS abort three times; the objects behind it in the same
    # association did not wait for it (they arrived first), and it arrived once in the end.
    flaky = old.flaky_uid
    versions = [(j["series_uid"][-8:], j.get("version")) for j in jobs(sessions)]
    assert flaky is not None and old.aborts == FLAKY_ABORTS and \
        old.received.count(flaky) == 1, (f"flaky {flaky}, aborts {old.aborts}, received "
                                         f"{len(old.received)}, jobs {versions}")
    same_job = {i["sop_instance_uid"] for j in jobs(sessions)
                if flaky in {i["sop_instance_uid"] for i in j["items"]}
                for i in j["items"] if i["kind"] == "overlay"} - {flaky}
    behind = [i for i, u in enumerate(old.received) if u in same_job]
    assert behind and max(behind) < old.received.index(flaky), "the outbox waited on one item"
    _check_and_record(sessions, broken, in_orthanc, old.received, waiting, outage_s,
                      recovery_s, len(series), old.aborts, retried, scenario("outage", db_url))
    sessions.kw["bind"].dispose()


def _break_two_results(storage: Path, sessions) -> set[str]:  # type: ignore[no-untyped-def]
    """Delete one pending result for Orthanc and cut another one short (after its meta)."""
    pending = {o["sop_instance_uid"] for o in _rows(sessions, "orthanc")
               if o["state"] == "pending"}
    items = [i for j in jobs(sessions) for i in j["items"] if i["sop_instance_uid"] in pending]
    sr = next(i for i in items if i["kind"] == "sr")
    overlay = next(i for i in items if i["kind"] == "overlay")
    (storage / sr["path"]).unlink()
    path = storage / overlay["path"]
    path.write_bytes(path.read_bytes()[:400])
    return {sr["sop_instance_uid"], overlay["sop_instance_uid"]}


def _check_and_record(sessions, broken: set[str], in_orthanc: list[str],  # type: ignore[no-untyped-def]
                      in_old: list[str], waiting: list[dict], outage_s: float,
                      recovery_s: float, n_series: int, aborts: int, retried: int,
                      name: str) -> None:
    js = jobs(sessions)
    assert len(js) == n_series and all(j["state"] == "done" for j in js)
    rows = outbox(sessions)
    orthanc = [o for o in rows if o["destination"] == "orthanc"]
    to_old = [o for o in rows if o["destination"] == "old"]
    everything = {i["sop_instance_uid"] for j in js for i in j["items"]}
    assert {o["sop_instance_uid"] for o in orthanc} == everything
    failed = {o["sop_instance_uid"]: o for o in orthanc if o["state"] == "failed"}
    assert set(failed) == broken
    assert all(o["attempts"] >= 1 and "cannot read" in o["last_error"] for o in failed.values())
    assert len(in_orthanc) == len(set(in_orthanc)) and set(in_orthanc) == everything - broken
    # The older PACS: SEG refused once per series (permanent), SR and overlays arrive once each.
    segs = [o for o in to_old if o["kind"] == "seg"]
    assert len(segs) == n_series and all(o["state"] == "failed" and o["attempts"] == 1
                                         for o in segs)
    wanted_old = {o["sop_instance_uid"] for o in to_old if o["kind"] != "seg"}
    assert all(o["state"] == "sent" for o in to_old if o["kind"] != "seg")
    assert len(in_old) == len(set(in_old)) and set(in_old) == wanted_old
    record(name, "Orthanc frozen (SIGSTOP: associations time out), then killed (connection "
           "refused), then started again, while series keep arriving; a second PACS refuses "
           "SEG and aborts the association on one overlay 3 times; one pending result deleted "
           "and one cut short during the outage; series of 32 slices, 64x64, threshold backend",
           series=n_series, outage_s=round(outage_s, 1), hung_s=HUNG_S, down_s=DOWN_S,
           results_waiting_when_pacs_returned=len(waiting),
           max_attempts_while_waiting=max((o["attempts"] for o in waiting), default=0),
           delivered_to_orthanc=len(in_orthanc), expected_in_orthanc=len(everything - broken),
           duplicates_in_orthanc=len(in_orthanc) - len(set(in_orthanc)),
           delivered_to_seg_refusing_pacs=len(in_old), expected_there=len(wanted_old),
           duplicates_there=len(in_old) - len(set(in_old)),
           aborts_by_flaky_item_without_blocking_others=aborts,
           drained_after_pacs_back_s=round(recovery_s, 1),
           permanent_failures=dict(Counter(
               o["last_error"].split(":")[0] for o in rows if o["state"] == "failed")),
           # Attempts include the transient ones while the PACS was away; none came after.
           attempts_on_permanent_failures=sorted({o["attempts"] for o in rows
                                                  if o["state"] == "failed"}),
           tries_after_failing_permanently=retried,
           profile=PROFILE)
