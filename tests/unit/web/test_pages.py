"""Every console page and action over real HTTP on loopback.

The tests that read or write rows run on SQLite and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.db.models import AuditEntry, DestinationPause, Job, Series
from dicomnode.db.session import make_sessions
from dicomnode.send.outbox import deliver_due
from tests.conftest import requires
from tests.unit.web.console_fixtures import (
    ACCESSION,
    PATIENT_ID,
    PATIENT_NAME,
    client,
    console_settings,
    running_console,
    seed,
    token,
)


def test_every_page_renders_without_patient_identifiers(tmp_path: Path, db_url: str) -> None:
    storage = tmp_path / "storage"
    settings = console_settings(storage, **{"database.url": db_url})
    ids = seed(make_sessions(settings.database_url), storage)
    with running_console(settings) as base, client(base) as http:
        pages = {path: http.get(path) for path in (
            "/", "/series", f"/jobs/{ids['job']}", "/destinations", "/audit",
            "/series?state=done&reason=&day=", "/models/0")}
        for path, r in pages.items():
            assert r.status_code == 200, path
            for secret in (PATIENT_ID, ACCESSION, PATIENT_NAME):
                assert secret not in r.text, (path, secret)
        overview = pages["/"].text
        assert "DICOMNODE" in overview and "ich-unet-synth" in overview and "alive" not in overview
        assert 'id="worker">down' in overview
        series = pages["/series"].text
        assert "CT HEAD NC" in series and "18.5°" in series and f"/jobs/{ids['job']}" in series
        job = pages[f"/jobs/{ids['job']}"].text
        for expected in ("segment", "3.2 s", "ich_volume_ml", "12.5", "he_probability",
                         "association rejected", "v1-summary.png", "9.9.1"):
            assert expected in job, expected
        assert "association rejected" in pages["/destinations"].text
        preview = http.get(f"/jobs/{ids['job']}/previews/v1-summary.png")
        assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
        assert http.get(f"/jobs/{ids['job']}/previews/..%2Fresult.json").status_code == 404
        assert http.get("/jobs/999").status_code == 404
        assert "set-cookie" in pages["/"].headers
        cookie = pages["/"].headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie


def test_identifiers_are_shown_only_when_configured(tmp_path: Path, db_url: str) -> None:
    storage = tmp_path / "storage"
    settings = console_settings(storage, **{"web.show_patient_identifiers": True,
                                            "database.url": db_url})
    ids = seed(make_sessions(settings.database_url), storage)
    with running_console(settings) as base, client(base) as http:
        assert PATIENT_ID in http.get("/series").text
        assert ACCESSION in http.get(f"/jobs/{ids['job']}").text


def test_actions_need_the_csrf_token_and_are_audited(tmp_path: Path, db_url: str) -> None:
    storage = tmp_path / "storage"
    settings = console_settings(storage, **{"database.url": db_url})
    sessions = make_sessions(settings.database_url)
    ids = seed(sessions, storage)
    with running_console(settings) as base, client(base) as http:
        csrf = token(http.get(f"/jobs/{ids['job']}").text)
        for path in (f"/jobs/{ids['job']}/resend", f"/series/{ids['series']}/reprocess",
                     "/destinations/pacs/pause"):
            assert http.post(path, data={}).status_code == 403
            assert http.post(path, data={"csrf": "forged"}).status_code == 403
        with sessions() as s:
            assert s.scalars(select(AuditEntry)).all() == []
        r = http.post(f"/jobs/{ids['job']}/resend", data={"csrf": csrf, "back": "/"})
        assert r.status_code == 303
        assert "2 outputs queued" in http.get("/").text  # the flash message
        r = http.post(f"/series/{ids['series']}/reprocess", data={"csrf": csrf})
        assert r.status_code == 303
        assert http.post("/destinations/pacs/pause", data={"csrf": csrf}).status_code == 303
        assert "paused by local" in http.get("/destinations").text
        with sessions() as s:
            assert s.get(DestinationPause, "pacs") is not None
            assert [j.version for j in s.scalars(select(Job).order_by(Job.id))] == [1, 2]
            assert s.get_one(Series, ids["series"]).state == "queued"
        # Paused: nothing is tried (the destination's port is closed: it would fail).
        assert deliver_due(sessions, settings) == {}
        assert http.post("/destinations/pacs/resume", data={"csrf": csrf}).status_code == 303
        assert http.post("/destinations/nowhere/pause", data={"csrf": csrf}).status_code == 404
        audit_page = http.get("/audit").text
        with sessions() as s:
            rows = [(a.user, a.action, a.target) for a in
                    s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        assert rows == [("local", "resend", f"job {ids['job']}"),
                        ("local", "reprocess", f"series {ids['series']}"),
                        ("local", "pause", "destination pacs"),
                        ("local", "resume", "destination pacs")]
        assert "reprocess" in audit_page and "127.0.0.1" in audit_page


def test_metrics_and_probes(tmp_path: Path, db_url: str) -> None:
    storage = tmp_path / "storage"
    settings = console_settings(storage, **{"database.url": db_url})
    seed(make_sessions(settings.database_url), storage)
    with running_console(settings) as base, client(base) as http:
        assert http.get("/healthz").text == "ok"
        ready = http.get("/readyz")
        assert ready.status_code == 503  # no DICOM listener and no worker in this test
        assert ready.json() == {"ready": False, "listening": False, "database": True,
                                "worker": False, "disk": True}
        text = http.get("/metrics").text
        for line in ('dicomnode_series_total{state="done"} 1.0',
                     'dicomnode_jobs_total{state="done"} 1.0', "dicomnode_queue_depth 0.0",
                     'dicomnode_stage_seconds_bucket{le="5.0",stage="segment"} 1.0',
                     'dicomnode_stage_seconds_count{stage="encode"} 1.0',
                     'dicomnode_deliveries_total{destination="pacs",outcome="sent"} 1.0',
                     'dicomnode_deliveries_total{destination="pacs",outcome="retried"} 1.0',
                     'dicomnode_outbox_pending{destination="pacs"} 0.0',
                     'dicomnode_instances_refused_total{reason="out_of_resources"} 0.0',
                     'dicomnode_associations_total{result="rejected"} 0.0',
                     "dicomnode_worker_up 0.0", "dicomnode_instances_received_total 0.0",
                     "dicomnode_result_latency_seconds_count 0.0"):
            assert line in text, line
        assert "dicomnode_free_disk_bytes " in text
        assert "1.2.3.4" not in text  # no UIDs in labels
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                                   capture_output=True, timeout=60)
            assert check.returncode == 0, check.stdout + check.stderr


@requires("promtool")
def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    settings = console_settings(storage)
    seed(make_sessions(settings.database_url), storage)
    with running_console(settings) as base, client(base) as http:
        text = http.get("/metrics").text
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def test_pages_use_read_only_sessions(tmp_path: Path, db_url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from dicomnode.web.server import read_only_sessions

    settings = console_settings(tmp_path / "storage", **{"database.url": db_url})
    make_sessions(settings.database_url).kw["bind"].dispose()
    readers = read_only_sessions(settings)
    # SQLite: "attempt to write a readonly database"; PostgreSQL: "cannot execute DELETE in a
    # read-only transaction".
    with pytest.raises(DBAPIError, match="readonly|read-only"), readers.begin() as s:
        s.execute(text("DELETE FROM series"))
    readers.kw["bind"].dispose()


@requires("promtool")
def test_the_sample_alert_rules_are_valid() -> None:
    from tests.conftest import REPO

    rules = REPO / "config" / "prometheus" / "dicomnode-alerts.yml"
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                           timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    for metric in ("dicomnode_worker_up", "dicomnode_queue_depth", "dicomnode_deliveries_total",
                   "dicomnode_free_disk_bytes", "dicomnode_jobs_total"):
        assert metric in rules.read_text()
