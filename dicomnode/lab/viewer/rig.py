"""The viewer rig: Orthanc (DICOMweb only) + OHIF on one loopback origin + the node forwarding to it.

``ViewerRig`` starts, on 127.0.0.1 and free ports: Orthanc with its DICOMweb plugin and no
DICOM server, the :class:`~dicomnode.lab.viewer.proxy.ViewerProxy` in front of it serving OHIF,
and ``dicomnode serve --forward <Orthanc's DICOMweb URL>`` (so results reach the viewer by
STOW-RS). ``send`` C-STOREs a study to the node (DCMTK ``storescu`` when installed, else
``dicomnode send``), ``wait_results`` waits until every result is delivered, and
``viewer_url`` is the page a person or :class:`~dicomnode.lab.viewer.browser.Browser` opens.

Orthanc 1.10 cannot bind one address: its HTTP socket listens on every interface but refuses
every client except loopback (``RemoteAccessAllowed`` false), its DICOM server is off, and it is
configured with no peer, so it contacts nothing. The proxy and the node listen on 127.0.0.1.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.lab.orthanc import Orthanc, free_port

from . import ohif
from .proxy import ViewerProxy

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Results:
    """The series the node delivered for one source series, as Orthanc holds them."""

    study_instance_uid: str
    source_series_uid: str
    seg_series_uid: str
    sr_series_uid: str
    overlay_series_uid: str  # "" when no slice has blood (a normal scan)
    summary_series_uid: str
    delivered_s: float  # from the last instance acknowledged to the last result stored


class ViewerRig:
    """Orthanc + OHIF + the node on loopback; a context manager that stops what it started."""

    def __init__(self, root: Path | None = None, *, backend: str = "threshold",
                 settle_s: float = 1.0) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="dicomnode-viewer-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend, self.settle_s = backend, settle_s
        self.orthanc = Orthanc(self.root / "orthanc", dicomweb=True, dicom=False)
        self.proxy: ViewerProxy | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self.node_port = free_port()
        self.storage = self.root / "storage"

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> ViewerRig:
        atexit.register(self.stop)  # an exception or sys.exit in the caller leaves nothing running
        try:
            self.orthanc.start()
            self.proxy = ViewerProxy(ohif.dist_dir(), ohif.app_config(), self.orthanc.http_port).start()
            self._start_node()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self) -> None:
        config = self.root / "node.toml"
        model = ohif.REPO / "models" / "ich-unet-synth"  # the shipped bundle, not next to node.toml
        config.write_text(
            f'[segmentation]\nbackend = "{self.backend}"\nunet_model = "{model}"\n'
            "[assembly]\nsweep_interval_s = 0.3\n"
            "[delivery]\ninterval_s = 0.3\nretry_base_s = 0.5\nretry_max_s = 2\n"
            "[storage]\nmin_free_disk_mb = 0\n", encoding="utf-8")
        log = open(self.root / "node.log", "ab")  # noqa: SIM115 - lives with the process
        self.node = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config),
             "--storage", str(self.storage), "--port", str(self.node_port),
             "--settle-s", str(self.settle_s), "--forward", self.orthanc.dicomweb_url],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.node.poll() is not None:
                raise RuntimeError(f"dicomnode serve exited: {(self.root / 'node.log').read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.node_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dicomnode serve did not start listening")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.node is not None and self.node.poll() is None:
            self.node.terminate()
            try:
                self.node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait()
        self.node = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        self.orthanc.stop()

    def __enter__(self) -> ViewerRig:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- use ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.proxy is not None, "rig not started"
        return self.proxy.url

    def viewer_url(self, study_uid: str, series_uid: str | None = None) -> str:
        """OHIF's viewer on a study; ``series_uid`` opens that series (a SEG or SR: loaded)."""
        url = f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"
        return url + (f"&initialSeriesInstanceUID={series_uid}" if series_uid else "")

    def send(self, folder: Path) -> float:
        """Send a study as a scanner would: a copy to the PACS (Orthanc's REST API), and C-STORE
        of every file of ``folder`` to the node; returns the monotonic time when the node
        acknowledged the last instance (the sender has returned)."""
        self.orthanc.upload(sorted(Path(folder).glob("*.dcm")))
        storescu = shutil.which("storescu")
        if storescu:
            cmd = [storescu, "-R", "+sd", "+sp", "*.dcm", "-aec", "DICOMNODE", "127.0.0.1",
                   str(self.node_port), f"{folder}/"]
        else:
            cmd = [sys.executable, "-m", "dicomnode.cli", "send", str(folder), "--to",
                   f"DICOMNODE@127.0.0.1:{self.node_port}"]
        subprocess.run(cmd, env={**os.environ, "TCP_NODELAY": "1"}, check=True, capture_output=True,
                       timeout=300)
        return time.monotonic()

    def status(self) -> list[dict[str, Any]]:
        out = subprocess.run([sys.executable, "-m", "dicomnode.cli", "status", "--json", "--config",
                              str(self.root / "node.toml"), "--storage", str(self.storage)],
                             check=True, capture_output=True, text=True, timeout=60)
        return list(json.loads(out.stdout))

    def wait_results(self, source_series_uid: str, acked_at: float, timeout_s: float = 300) -> Results:
        """Wait until the node has delivered every result of ``source_series_uid`` to Orthanc."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = [r for r in self.status() if r.get("series_instance_uid") == source_series_uid]
            if rows and rows[0]["state"] == "failed":
                raise RuntimeError(f"job failed: {rows[0].get('reason')}")
            delivery = rows[0].get("delivery") if rows else None
            if rows and rows[0]["state"] == "done" and delivery and not delivery["pending"]:
                if delivery["failed"]:
                    raise RuntimeError(f"delivery failed: {delivery['errors']}")
                return self._results(rows[0]["study_instance_uid"], source_series_uid,
                                     time.monotonic() - acked_at)
            time.sleep(0.25)
        raise TimeoutError(f"results of {source_series_uid} not delivered in {timeout_s:g} s")

    def _results(self, study_uid: str, source_series_uid: str, delivered_s: float) -> Results:
        """The result series of one study in Orthanc, by SOP class (and Modality for the SC)."""
        (study,) = [s for s in self.orthanc.get("/studies")
                    if self.orthanc.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] == study_uid]
        found: dict[str, str] = {}
        for sid in self.orthanc.get(f"/studies/{study}")["Series"]:
            info = self.orthanc.get(f"/series/{sid}")
            first = self.orthanc.get(f"/instances/{info['Instances'][0]}/simplified-tags")
            key = {SEG_CLASS: "seg", SR_CLASS: "sr"}.get(first.get("SOPClassUID"), "")
            if first.get("SOPClassUID") == SC_CLASS:
                key = "summary" if first.get("Modality") == "OT" else "overlay"
            if key:
                found[key] = info["MainDicomTags"]["SeriesInstanceUID"]
        return Results(study_instance_uid=study_uid, source_series_uid=source_series_uid,
                       seg_series_uid=found["seg"], sr_series_uid=found["sr"],
                       overlay_series_uid=found.get("overlay", ""), summary_series_uid=found["summary"],
                       delivered_s=delivered_s)
