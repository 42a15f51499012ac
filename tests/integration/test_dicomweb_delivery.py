"""DICOMweb delivery (STOW-RS) through the outbox to Orthanc's DICOMweb plugin: delivered once,
retried after an outage, permanent refusals recorded, basic authentication. On SQLite and on
PostgreSQL (the ``outbox_case`` fixture of test_delivery.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.config import Destination
from dicomnode.db.models import OutboxItem
from dicomnode.lab.orthanc import Orthanc, dicomweb_plugin
from dicomnode.send.outbox import deliver_due, enqueue, resend
from tests.integration.conftest import OutboxCase
from tests.integration.test_delivery import _later, _states

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc not installed"),
    pytest.mark.skipif(dicomweb_plugin() is None, reason="orthanc-dicomweb not installed"),
]


def _dest(pacs: Orthanc, **kw: object) -> Destination:
    return Destination(name="web", kind="dicomweb", url=pacs.dicomweb_url, **kw)  # type: ignore[arg-type]


def test_outage_then_every_result_arrives_exactly_once(tmp_path: Path,
                                                       outbox_case: OutboxCase) -> None:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True, dicom=False)  # down for now
    settings, sessions, job_id, items = outbox_case(
        _dest(pacs), {"sr": 1, "overlay": 3, "seg": 1},
        **{"delivery.retry_base_s": 1.0})
    assert enqueue(sessions, job_id, items, settings.destinations) == 5
    assert deliver_due(sessions, settings) == {"transient": 5}  # connection refused
    assert set(_states(sessions).values()) == {"pending"}
    assert deliver_due(sessions, settings) == {}  # backoff: not due yet
    with pacs:
        assert deliver_due(sessions, settings, now=_later()) == {"sent": 5}
        assert deliver_due(sessions, settings, now=_later(60)) == {}
        stored = [i["SOPInstanceUID"] for i in pacs.instances()]
        assert sorted(stored) == sorted(i["sop_instance_uid"] for i in items)
        assert resend(sessions, job_id) == 5  # same UIDs: Orthanc keeps one copy of each
        assert deliver_due(sessions, settings, now=_later()) == {"sent": 5}
        assert len(pacs.get("/instances")) == 5
    with sessions() as s:
        assert all(i.last_error == "" for i in s.scalars(select(OutboxItem)))


def test_basic_authentication_and_a_refused_password(tmp_path: Path,
                                                     outbox_case: OutboxCase) -> None:
    secret = tmp_path / "secret"
    secret.write_text("right-one\n")
    with Orthanc(tmp_path / "orthanc", dicomweb=True, dicom=False,
                 users={"dicomnode": "right-one"}) as pacs:
        dest = _dest(pacs, auth="basic", username="dicomnode", secret_file=secret)
        settings, sessions, job_id, items = outbox_case(dest, {"sr": 2})
        enqueue(sessions, job_id, items, settings.destinations)
        assert deliver_due(sessions, settings) == {"sent": 2}
        secret.write_text("wrong-one\n")  # read at each delivery: no restart needed
        assert resend(sessions, job_id) == 2
        assert deliver_due(sessions, settings, now=_later()) == {"permanent": 2}
        with sessions() as s:
            rows = list(s.scalars(select(OutboxItem)))
        assert {r.state for r in rows} == {"failed"}
        assert {r.last_error for r in rows} == {"HTTP 401 Unauthorized"}
        assert all("wrong-one" not in r.last_error for r in rows)
