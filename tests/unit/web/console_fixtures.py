"""A console over real HTTP on loopback, on a database with one analysed series."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import uvicorn

from dicomnode.config import Destination, Settings
from dicomnode.db.models import Job, OutboxItem, Series, Study, utcnow
from dicomnode.db.session import SessionFactory, make_sessions
from dicomnode.web.app import create_app
from dicomnode.web.server import read_only_sessions, writing_sessions
from tests.conftest import free_port, make_settings

PATIENT_ID, ACCESSION, PATIENT_NAME = "PAT-SECRET-4711", "ACC-SECRET9", "Doe^Secret"


def console_settings(storage: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"web.port": free_port(), "destinations.add": [
        Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port())]}
    values.update(overrides)
    return make_settings(storage, **values)


def seed(sessions: SessionFactory, storage: Path) -> dict[str, int]:
    """One study, one done series with a job, its result folder and three outbox rows."""
    out_dir = storage / "_results" / "1.2.3.4" / "v1"
    (out_dir / "previews").mkdir(parents=True)
    (out_dir / "previews" / "v1-summary.png").write_bytes(
        bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                      "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"))
    (out_dir / "result.json").write_text(
        '{"ich_volume_ml": 12.5, "ivh_volume_ml": 0.0, "abc2_ml": 11.9, "site": "lobar", '
        '"he_probability": 0.31, "pse_probability": 0.12, "cave_score": 2, '
        f'"patient_id": "{PATIENT_ID}", "warnings": []}}')
    now = utcnow()
    with sessions.begin() as s:
        study = Study(study_instance_uid="1.2.3", patient_id=PATIENT_ID, accession_number=ACCESSION)
        s.add(study)
        s.flush()
        series = Series(series_instance_uid="1.2.3.4", study_id=study.id, state="done",
                        instance_count=40, attributes={"series_description": "CT HEAD NC",
                                                       "patient_name": PATIENT_NAME},
                        geometry={"tilt_deg": 18.5, "spacing_mm": 5.0},
                        last_received_at=now - timedelta(seconds=90))
        s.add(series)
        s.flush()
        job = Job(series_id=series.id, version=1, state="done", attempts=1,
                  timings_s={"load": 0.4, "segment": 3.2, "measure": 0.1, "predict": 0.2,
                             "encode": 0.9, "total": 4.9},
                  outputs={"dir": "_results/1.2.3.4/v1", "items": [
                      {"kind": "seg", "path": "x/seg.dcm", "sop_class_uid": "1.2",
                       "sop_instance_uid": "9.9.1"}]},
                  finished_at=now - timedelta(seconds=60))
        s.add(job)
        s.flush()
        s.add(OutboxItem(job_id=job.id, kind="seg", destination="pacs", path="x/seg.dcm",
                         sop_class_uid="1.2", sop_instance_uid="9.9.1", state="sent",
                         attempts=2, sent_at=now - timedelta(seconds=30)))
        s.add(OutboxItem(job_id=job.id, kind="sr", destination="pacs", path="x/sr.dcm",
                         sop_class_uid="1.3", sop_instance_uid="9.9.2", state="failed",
                         attempts=1, last_error="association rejected"))
        return {"series": series.id, "job": job.id}


@contextmanager
def running_console(settings: Settings) -> Iterator[str]:
    """The console app under uvicorn in a thread; yields its base URL."""
    make_sessions(settings.database_url).kw["bind"].dispose()  # creates the schema if empty
    readers, writers = read_only_sessions(settings), writing_sessions(settings)
    app = create_app(settings, readers, writers)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.web.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("console did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.web.port}"
    finally:
        server.should_exit = True
        thread.join(10)
        for sessions in (readers, writers):
            sessions.kw["bind"].dispose()


def token(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, "no CSRF token in the page"
    return m.group(1)


def client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, follow_redirects=False, timeout=30)
