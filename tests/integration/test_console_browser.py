"""The console of a real ``dicomnode serve``: a series goes through the node, then headless
Chromium opens the overview and the job page; and a console port that is taken stops nothing.

The browser case runs on SQLite and on PostgreSQL (``db_url``): the console child reads through
read-only sessions of either. The taken-port case does not depend on the database.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from dicomnode.db.session import make_sessions
from dicomnode.lab.synth import make_study
from tests.conftest import REPO, free_port, requires
from tests.ct_series import make_series
from tests.reliability.harness import ServeProcess, node_config, wait_until, with_database
from tests.unit.web.console_fixtures import PATIENT_ID

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _serve(tmp_path: Path, web_port: int, db_url: str = "") -> ServeProcess:
    config = node_config(tmp_path / "node.toml")
    config.write_text(config.read_text() + f"[web]\nport = {web_port}\n")
    if db_url:
        with_database(config, db_url, config)
    return ServeProcess(tmp_path / "storage", free_port(), settle_s=0.5, config=config)


def _send(port: int, series: list[Dataset]) -> None:
    ae = AE(ae_title="CONSOLETEST")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    for ds in series:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()


def _chromium(url: str, profile: Path, *extra: str) -> str:
    out = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _wait_http(url: str) -> None:
    wait_until(lambda: _ok(url), 60, f"{url} answering", 0.2)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@requires("chromium")
def test_browser_shows_overview_and_job_of_a_real_series(tmp_path: Path, db_url: str) -> None:
    web_port = free_port()
    node = _serve(tmp_path, web_port, db_url)
    sessions = make_sessions(db_url)
    base = f"http://127.0.0.1:{web_port}"
    try:
        # A synthetic head phantom: it passes the QA input checks, so the job ends done.
        truth = make_study(tmp_path / "study", seed=41, hemorrhage_ml=12.0, matrix=64)
        series = [pydicom.dcmread(p) for p in sorted(truth.dicom_dir.glob("*.dcm"))]
        for ds in series:
            ds.PatientID = PATIENT_ID
        n = len(series)
        _send(node.port, series)
        from sqlalchemy import select

        from dicomnode.db.models import Job

        def finished() -> int | None:
            with sessions() as s:
                return s.scalar(select(Job.id).where(
                    Job.state.in_(("done", "failed", "not_analysed"))))

        job_id = wait_until(finished, 180, "the job finished", 0.5)
        _wait_http(f"{base}/healthz")
        wait_until(lambda: httpx.get(f"{base}/readyz").json()["worker"], 30, "worker heartbeat")
        ready = httpx.get(f"{base}/readyz").json()
        assert ready == {"ready": True, "listening": True, "database": True, "worker": True,
                         "disk": True}
        profile = tmp_path / "chromium"
        overview = _chromium(f"{base}/", profile, "--dump-dom")
        assert f"DICOMNODE @ 127.0.0.1:{node.port}" in overview
        assert 'id="worker">alive' in overview and 'id="done-today">1' in overview
        assert "threshold" in overview
        job = _chromium(f"{base}/jobs/{job_id}", profile, "--dump-dom")
        assert f"Job {job_id}" in job and 'id="job-state">done' in job
        for text in ("segment", str(series[0].SeriesDescription), f"{n} instances", "ich_volume_ml",
                     "-summary.png"):
            assert text in job, text
        assert PATIENT_ID not in overview + job
        metrics = httpx.get(f"{base}/metrics").text
        assert f"dicomnode_instances_received_total {n}.0" in metrics
        assert "dicomnode_worker_up 1.0" in metrics
        shots = tmp_path / "shots"
        shots.mkdir()
        for name, path in (("overview", "/"), ("job", f"/jobs/{job_id}")):
            _chromium(f"{base}{path}", profile, f"--screenshot={shots / name}.png",
                      "--window-size=1280,1000")
            assert (shots / f"{name}.png").stat().st_size > 5000
            if (REPO / "docs" / "images").is_dir() and _wanted():
                shutil.copy(shots / f"{name}.png", REPO / "docs" / "images" / f"console-{name}.png")
    finally:
        sessions.kw["bind"].dispose()
        assert node.stop() == 0


def _wanted() -> bool:
    import os

    return os.environ.get("DICOMNODE_SCREENSHOTS") == "1"


def test_a_taken_console_port_is_logged_and_reception_goes_on(tmp_path: Path,
                                                              ct_template: Dataset) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        node = _serve(tmp_path, taken.getsockname()[1])
        try:
            deadline = time.monotonic() + 60
            while "could not listen" not in node.log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "reception goes on without it" in node.log.read_text()
            _send(node.port, make_series(ct_template, 12))
            assert node.proc.poll() is None
        finally:
            assert node.stop() == 0


@pytest.mark.parametrize("flag", ["--web-port"])
def test_serve_help_names_the_web_port(flag: str) -> None:
    out = subprocess.run([str(REPO / ".venv" / "bin" / "dicomnode"), "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert flag in out.stdout
