"""Delivery: durable outbox, Orthanc as the PACS, outages, refusals and the SEG fallback.

Every test runs on SQLite and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.config import Destination
from dicomnode.db.models import OutboxItem, utcnow
from dicomnode.db.session import SessionFactory
from dicomnode.lab.orthanc import Orthanc, free_port
from dicomnode.send.outbox import deliver_due, enqueue, resend
from tests.integration.conftest import OutboxCase
from tests.reliability.harness import PickyPacs


def _states(sessions: SessionFactory) -> dict[str, str]:
    with sessions() as s:
        return {f"{i.kind}:{i.sop_instance_uid[-6:]}": i.state
                for i in s.scalars(select(OutboxItem))}


def _later(minutes: float = 30) -> object:
    return utcnow() + timedelta(minutes=minutes)


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc not installed")
def test_outage_then_every_result_arrives_exactly_once(tmp_path: Path,
                                                       outbox_case: OutboxCase) -> None:
    pacs = Orthanc(tmp_path / "orthanc")
    dest = Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=pacs.dicom_port,
                       outputs=("sr", "overlay"))
    settings, sessions, job_id, items = outbox_case(
        dest, {"sr": 1, "overlay": 3, "seg": 1},
        **{"delivery.retry_base_s": 1.0})
    assert enqueue(sessions, job_id, items, settings.destinations) == 4  # no SEG wanted
    assert enqueue(sessions, job_id, items, settings.destinations) == 0  # idempotent
    # PACS down: transient, retried later, nothing lost.
    assert deliver_due(sessions, settings) == {"transient": 4}
    assert set(_states(sessions).values()) == {"pending"}
    with sessions() as s:
        assert all(i.attempts == 1 and i.next_attempt_at > utcnow() - timedelta(seconds=1)
                   for i in s.scalars(select(OutboxItem)))
    assert deliver_due(sessions, settings) == {}  # backoff: not due yet
    with pacs:
        assert deliver_due(sessions, settings, now=_later()) == {"sent": 4}
        assert deliver_due(sessions, settings, now=_later(60)) == {}
        stored = {i["SOPInstanceUID"] for i in pacs.instances()}
        assert stored == {i["sop_instance_uid"] for i in items if i["kind"] != "seg"}
        # Resend: same UIDs, so the PACS still holds each object once.
        assert resend(sessions, job_id) == 4
        assert deliver_due(sessions, settings, now=_later()) == {"sent": 4}
        assert len(pacs.get("/instances")) == 4


def test_refused_seg_is_permanent_and_overlays_still_arrive(tmp_path: Path,
                                                            outbox_case: OutboxCase) -> None:
    pacs = PickyPacs(free_port())
    try:
        dest = Destination(name="old", ae_title="OLDPACS", host="127.0.0.1", port=pacs.port,
                           outputs=("seg", "sr"))
        settings, sessions, job_id, items = outbox_case(dest, {"seg": 1, "overlay": 2})
        assert enqueue(sessions, job_id, items, settings.destinations) == 1  # the SEG only
        assert deliver_due(sessions, settings) == {"permanent": 1}
        # The refusal is recorded and the overlays were queued instead; they arrive.
        assert deliver_due(sessions, settings) == {"sent": 2}
        states = _states(sessions)
        assert sorted(states.values()) == ["failed", "sent", "sent"]
        with sessions() as s:
            seg = s.scalar(select(OutboxItem).where(OutboxItem.kind == "seg"))
            assert "not accepted" in seg.last_error and seg.attempts == 1
        assert deliver_due(sessions, settings, now=_later(600)) == {}  # never retried
        assert sorted(pacs.received) == sorted(i["sop_instance_uid"] for i in items
                                               if i["kind"] == "overlay")
    finally:
        pacs.server.shutdown()


def test_rejected_association_is_permanent(tmp_path: Path, outbox_case: OutboxCase) -> None:
    pacs = PickyPacs(free_port())
    pacs.server.ae.require_called_aet = True
    try:
        dest = Destination(name="wrong", ae_title="NOTTHEM", host="127.0.0.1", port=pacs.port,
                           outputs=("overlay",))
        settings, sessions, job_id, items = outbox_case(dest, {"overlay": 2})
        enqueue(sessions, job_id, items, settings.destinations)
        assert deliver_due(sessions, settings) == {"permanent": 2}
        assert set(_states(sessions).values()) == {"failed"}
    finally:
        pacs.server.shutdown()


def test_damaged_output_fails_once_and_the_rest_is_sent(tmp_path: Path,
                                                        outbox_case: OutboxCase) -> None:
    pacs = PickyPacs(free_port())
    try:
        dest = Destination(name="old", ae_title="OLDPACS", host="127.0.0.1", port=pacs.port,
                           outputs=("overlay",))
        settings, sessions, job_id, items = outbox_case(dest, {"overlay": 4})
        cut, gone = (settings.storage.path / items[i]["path"] for i in (0, 2))
        cut.write_bytes(cut.read_bytes()[:400])  # file meta only: no SOP Instance UID
        gone.unlink()
        enqueue(sessions, job_id, items, settings.destinations)
        assert deliver_due(sessions, settings) == {"permanent": 2, "sent": 2}
        assert deliver_due(sessions, settings, now=_later(600)) == {}  # never retried
        assert sorted(pacs.received) == sorted(items[i]["sop_instance_uid"] for i in (1, 3))
    finally:
        pacs.server.shutdown()


def test_object_that_aborts_the_association_does_not_hold_back_the_others(
        tmp_path: Path, outbox_case: OutboxCase) -> None:
    pacs = PickyPacs(free_port())
    try:
        dest = Destination(name="old", ae_title="OLDPACS", host="127.0.0.1", port=pacs.port,
                           outputs=("overlay",))
        settings, sessions, job_id, items = outbox_case(dest, {"overlay": 4})
        flaky = items[0]["sop_instance_uid"]
        pacs.abort_first[flaky] = 5
        enqueue(sessions, job_id, items, settings.destinations)
        # The first object makes the PACS abort: it is retried later, the others were not
        # tried (no attempt counted) and go first in the next round.
        assert deliver_due(sessions, settings) == {"transient": 1, "deferred": 3}
        assert deliver_due(sessions, settings, now=_later(1)) == {"sent": 3, "transient": 1}
        assert pacs.received == [i["sop_instance_uid"] for i in items[1:]]
        with sessions() as s:
            attempts = {o.sop_instance_uid: o.attempts for o in s.scalars(select(OutboxItem))}
        assert attempts[flaky] == 2 and {attempts[i["sop_instance_uid"]] for i in items[1:]} == {1}
    finally:
        pacs.server.shutdown()
